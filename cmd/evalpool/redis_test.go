package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// Every message about --redis shows the URL with its password masked, and
// a URL that cannot be used is a usage error of one line.
func TestRedisURLMessages(t *testing.T) {
	t.Parallel()
	dead := evaltest.FreeAddr(t)
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no scheme", []string{"--redis", "127.0.0.1:6390", "pool", "status"}, 2, `no scheme; did you mean "redis://127.0.0.1:6390"?`},
		{"no scheme with a password", []string{"--redis", "alice:secret@127.0.0.1:6390/0", "pool", "status"}, 2, `did you mean "redis://alice:xxxxx@127.0.0.1:6390/0"?`},
		{"bad port", []string{"--redis", "redis://alice:secret@127.0.0.1:port/0", "pool", "status"}, 2, `bad Redis URL "redis://alice:xxxxx@127.0.0.1:port/0": invalid port`},
		{"sentinel without master", []string{"--redis", "redis-sentinel://alice:secret@127.0.0.1:26379/0", "pool", "status"}, 2, "no master name; add ?master=NAME"},
		{"CA for redis://", []string{"--redis", "redis://alice:secret@" + dead + "/0", "--redis-ca", "/nonexistent/ca.pem", "pool", "status"}, 2, "is not a TLS URL"},
		{"missing CA", []string{"--redis", "rediss://alice:secret@" + dead + "/0", "--redis-ca", "/nonexistent/ca.pem", "pool", "status"}, 2, "no such file"},
		{"cert without key", []string{"--redis", "rediss://" + dead + "/0", "--redis-cert", "/nonexistent/c.pem", "pool", "status"}, 2, "needs both"},
		{"unreachable", []string{"--redis", "redis://alice:secret@" + dead + "/0", "pool", "status"}, 1, "cannot connect to Redis redis://alice:xxxxx@" + dead + "/0: dial tcp"},
		{"pool add unreachable", []string{"--redis", "redis://alice:secret@" + dead + "/0", "pool", "add", "--no-probe", "http://e1"}, 1, "redis://alice:xxxxx@" + dead + "/0"},
		{"demo bad URL", []string{"demo", "--redis", "alice:secret@" + dead}, 2, `did you mean "redis://alice:xxxxx@` + dead + `"?`},
		{"demo unreachable", []string{"demo", "--redis", "redis://alice:secret@" + dead + "/0"}, 1, "demo: cannot connect to Redis redis://alice:xxxxx@" + dead + "/0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			code := run(t.Context(), tt.args, &out, &errb)
			stderr := strings.TrimSpace(errb.String())
			if code != tt.code || strings.Count(stderr, "\n") != 0 || !strings.HasPrefix(stderr, "evalpool: ") || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and one line holding %q", code, stderr, tt.code, tt.stderr)
			}
			if strings.Contains(out.String()+stderr, "secret") {
				t.Fatalf("the password shows: stdout %q, stderr %q", out.String(), stderr)
			}
		})
	}
}

// A Redis with ACLs and no default user: the CLI, the demo and the
// dashboard's Asynqmon all log in as the URL's user.
func TestRedisACLUser(t *testing.T) {
	t.Parallel()
	s := evaltest.StartACL(t, "evalpool", "s3cret")
	url := "redis://evalpool:s3cret@" + s.Addr + "/0"
	cli := func(args ...string) result { return runCLI(t, url, "acl", args...) }
	if r := cli("pool", "add", "--no-probe", "http://e1", "http://e2"); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	if r := cli("pool", "status"); r.code != 0 || !strings.Contains(r.stdout, "2 available") {
		t.Fatalf("pool status: %+v", r)
	}
	if r := cli("enqueue", "--spec", "{}"); r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	if r := runCLI(t, "redis://evalpool:wrong@"+s.Addr+"/0", "acl", "pool", "status"); r.code != 1 || !strings.Contains(r.stderr, "cannot connect to Redis redis://evalpool:xxxxx@") || !strings.Contains(r.stderr, "WRONGPASS") {
		t.Fatalf("pool status with a wrong password: %+v", r)
	}

	base := startDashboard(t, url)
	resp, err := http.Get(base + "/monitoring/api/queues")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var queues struct {
		Queues []struct{ Queue string } `json:"queues"`
	}
	if err := json.Unmarshal(body, &queues); resp.StatusCode != http.StatusOK || err != nil || len(queues.Queues) == 0 || !strings.HasPrefix(queues.Queues[0].Queue, "evals") {
		t.Fatalf("Asynqmon's queues: %s %s (%v); want the evals queue", resp.Status, body, err)
	}

	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"--redis", url, "demo", "--evals", "20", "--executors", "2"}, &out, &errb); code != 0 {
		t.Fatalf("demo: exit %d: %s %s", code, out.String(), lastLines(errb.String(), 3))
	}
	if want := "evalpool demo on Redis at redis://evalpool:xxxxx@" + s.Addr + "/0\n"; !strings.HasPrefix(out.String(), want) || strings.Contains(out.String()+errb.String(), "s3cret") {
		t.Fatalf("demo output %q; want it to start with %q and not show the password", out.String(), want)
	}
}

var dashboardURL = regexp.MustCompile(`dashboard: (http://\S+)/ `)

// startDashboard runs `evalpool dashboard` in-process until the test ends
// and returns its base URL. args are global flags, then, after a "--", the
// dashboard's own.
func startDashboard(t *testing.T, redisURL string, args ...string) string {
	t.Helper()
	logs := &evaltest.LogBuffer{}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan int, 1)
	global, own := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		global, own = args[:i], args[i+1:]
	}
	full := append([]string{"--redis", redisURL}, global...)
	full = append(append(full, "dashboard", "--listen", "127.0.0.1:0"), own...)
	go func() { done <- run(ctx, full, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("dashboard exited %d: %s", code, lastLines(logs.String(), 5))
		}
	})
	var base string
	evaltest.Eventually(t, 10*time.Second, "the dashboard never said where it listens", func() bool {
		if m := dashboardURL.FindStringSubmatch(logs.String()); m != nil {
			base = m[1]
		}
		return base != ""
	})
	return base
}

// rediss:// with a CA file and a client certificate (mutual TLS): works with
// them, fails with a clear line without.
func TestRedisTLS(t *testing.T) {
	t.Parallel()
	certs := evaltest.NewCerts(t)
	s := evaltest.StartTLS(t, certs, evaltest.Options{})
	url := "rediss://" + s.Addr + "/0"
	tlsFlags := []string{"--redis-ca", certs.CAFile, "--redis-cert", certs.ClientCert, "--redis-key", certs.ClientKey}
	cli := func(flags []string, args ...string) result { return runCLI(t, url, "tls", append(flags, args...)...) }
	if r := cli(tlsFlags, "pool", "add", "--no-probe", "http://e1"); r.code != 0 {
		t.Fatalf("pool add over TLS: %+v", r)
	}
	if r := cli(tlsFlags, "pool", "status"); r.code != 0 || !strings.Contains(r.stdout, "1 available") {
		t.Fatalf("pool status over TLS: %+v", r)
	}
	if r := cli(tlsFlags, "enqueue", "--spec", "{}"); r.code != 0 {
		t.Fatalf("enqueue over TLS: %+v", r)
	}
	base := startDashboard(t, url, tlsFlags...)
	resp, err := http.Get(base + "/monitoring/api/queues")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"evals:tls"`) {
		t.Fatalf("Asynqmon over TLS: %s %s", resp.Status, body)
	}

	for _, tt := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"without --redis-ca", tlsFlags[2:], "cannot connect to Redis " + url + ": tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{"without a client certificate", tlsFlags[:2], "cannot connect to Redis " + url},
	} {
		r := cli(tt.flags, "pool", "status")
		if r.code != 1 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("pool status %s: %+v; want exit 1 and one line holding %q", tt.name, r, tt.want)
		}
	}
}

// The TLS files may come from the environment, as the URL does.
func TestRedisTLSFromEnv(t *testing.T) {
	certs := evaltest.NewCerts(t)
	s := evaltest.StartTLS(t, certs, evaltest.Options{})
	t.Setenv("EVALPOOL_REDIS_URL", "rediss://"+s.Addr+"/0") // not parallel: it sets the environment
	t.Setenv("EVALPOOL_REDIS_CA", certs.CAFile)
	t.Setenv("EVALPOOL_REDIS_CERT", certs.ClientCert)
	t.Setenv("EVALPOOL_REDIS_KEY", certs.ClientKey)
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"pool", "status"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "0 executors") {
		t.Fatalf("pool status with TLS from the environment: exit %d, %q, %q", code, out.String(), errb.String())
	}
}

// TestDeadRedisLogsAreJSON: a worker facing a dead Redis writes its log as
// JSON, every line of it (Asynq's metrics collector logs with the standard
// logger), and ends with one plain error line.
func TestDeadRedisLogsAreJSON(t *testing.T) {
	// Not parallel: the standard logger is the process's, and every run of
	// the command (other tests run it in this process) points it at its own
	// log.
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"--redis", "redis://" + evaltest.FreeAddr(t) + "/0", "worker", "--metrics-addr", "127.0.0.1:0"}, &out, &errb)
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if code != 1 || len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "evalpool: ") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	for _, l := range lines[:len(lines)-1] {
		if !json.Valid([]byte(l)) {
			t.Errorf("not a JSON log line: %q", l)
		}
	}
	// The metrics collector's complaint reaches our log, not the process's
	// stderr in the standard logger's format.
	if !strings.Contains(errb.String(), `"component":"stdlib"`) {
		t.Errorf("the standard logger's line is not in the worker's log: %q", errb.String())
	}
}
