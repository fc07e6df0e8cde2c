package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// hostDo sends a request with the Host given.
func hostDo(t *testing.T, method, url, host, body string, headers ...string) (int, string) {
	t.Helper()
	r, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Host = host
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The dashboard answers the names it is reached by only, token or not:
// the request of a DNS rebinding page (its own name as Host, and as
// Origin) is refused, the names of --allowed-hosts (or
// EVALPOOL_ALLOWED_HOSTS) and --listen's host are served, and a bad entry
// is a usage error. (Not parallel: it sets the environment.)
func TestDashboardAllowedHosts(t *testing.T) {
	url := evaltest.StartT(t, evaltest.Options{}).URL() // it enqueues: a Redis of its own
	if r := runCLI(t, url, "default", "pool", "add", "--no-probe", "http://e1"); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	const token = "cli-token-0123456789abcdef"
	t.Setenv("EVALPOOL_AUTH_TOKEN", token)
	t.Setenv("EVALPOOL_ALLOWED_HOSTS", "")
	bearer := []string{"Authorization", "Bearer " + token, "Content-Type", "application/json"}
	n := 0
	submit := func(base, host string, _ int) (int, string) {
		n++
		return hostDo(t, "POST", base+"/api/v1/evals", host, fmt.Sprintf(`{"eval_id":"h%d","spec":{}}`, n),
			append([]string{"Origin", "http://" + host}, bearer...)...)
	}

	// The compose file's dashboard: --listen :8080 and a token.
	code, base, _ := dashboardCLI(t, url, "--listen", "127.0.0.1:0")
	if code != -1 {
		t.Fatalf("dashboard exited %d", code)
	}
	port := base[strings.LastIndex(base, ":")+1:]
	if code, body := submit(base, "attacker.example:8080", 0); code != http.StatusForbidden || !strings.Contains(body, "--allowed-hosts") {
		t.Fatalf("a request to attacker.example:8080 with the token: %d %.200q, want 403", code, body)
	}
	if code, body := submit(base, "localhost:"+port, 1); code != http.StatusCreated {
		t.Fatalf("a request to localhost: %d %.200q", code, body)
	}

	for _, tc := range []struct {
		name string
		env  string
		args []string
		good []string
		bad  []string
	}{
		{"flag", "", []string{"--allowed-hosts", "dash.example.com,.corp.example"}, []string{"dash.example.com", "a.corp.example:9"}, []string{"attacker.example", "env.example"}},
		{"env", "env.example, other.example", nil, []string{"env.example", "other.example:1"}, []string{"dash.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("EVALPOOL_ALLOWED_HOSTS", tc.env)
			code, base, logs := dashboardCLI(t, url, append(tc.args, "--listen", "127.0.0.1:0")...)
			if code != -1 {
				t.Fatalf("dashboard exited %d: %s", code, lastLines(logs.String(), 2))
			}
			for i, h := range tc.good {
				if code, body := submit(base, h, 2+i); code != http.StatusCreated {
					t.Errorf("Host %s: %d %.200q, want 201", h, code, body)
				}
			}
			for i, h := range tc.bad {
				if code, body := submit(base, h, 5+i); code != http.StatusForbidden {
					t.Errorf("Host %s: %d %.200q, want 403", h, code, body)
				}
			}
		})
	}

	for _, bad := range []string{"http://dash.example.com", "*"} {
		code, _, logs := dashboardCLI(t, url, "--listen", "127.0.0.1:0", "--allowed-hosts", bad)
		if code != 2 || !strings.Contains(logs.String(), "bad allowed host") || strings.Contains(logs.String(), token) {
			t.Errorf("--allowed-hosts %s: exit %d: %s", bad, code, lastLines(logs.String(), 3))
		}
	}
}

// --listen's host is a name the dashboard is reached by, unless it is
// every interface.
func TestDashboardListenHostAllowed(t *testing.T) {
	t.Setenv("EVALPOOL_ALLOWED_HOSTS", "")
	for _, tc := range []struct {
		listen string
		want   []string
	}{
		{"dash.internal:8080", []string{"dash.internal"}},
		{"10.0.0.5:8080", []string{"10.0.0.5"}},
		{"[fd00::1]:8080", []string{"[fd00::1]"}},
		{":8080", nil},
		{"0.0.0.0:8080", nil},
		{"[::]:8080", nil},
	} {
		if got := (&dashboardFlags{}).hosts(tc.listen); !slices.Equal(got, tc.want) {
			t.Errorf("--listen %s: allowed hosts %q, want %q", tc.listen, got, tc.want)
		}
	}
	got := (&dashboardFlags{allowedHosts: []string{"a.example"}}).hosts("b.example:80")
	if !slices.Equal(got, []string{"a.example", "b.example"}) {
		t.Errorf("--allowed-hosts a.example --listen b.example:80: %q", got)
	}
}

// Idle connections cannot keep an authenticated request out, however few
// descriptors the dashboard has: run under a limit of 256, it is sent 300
// connections that say nothing, then a request with the token.
func TestDashboardIdleConnectionsLockOut(t *testing.T) {
	t.Parallel()
	url := evaltest.URL(t)
	const token = "cli-token-0123456789abcdef"
	logs := &evaltest.LogBuffer{}
	cmd := exec.Command("sh", "-c", `ulimit -n 256 && exec "$0" "$@"`, os.Args[0],
		"--redis", url, "dashboard", "--listen", "127.0.0.1:0", "--auth-token", token)
	cmd.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); _ = cmd.Wait() })
	var base string
	evaltest.Eventually(t, 20*time.Second, "the dashboard listening", func() bool {
		if m := listeningOn.FindStringSubmatch(logs.String()); m != nil {
			base = "http://" + m[1]
		}
		return base != ""
	})
	addr := strings.TrimPrefix(base, "http://")
	for range 300 {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second) // under the header timeout, which would free them
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/v1/runs", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(r)
	if err != nil {
		t.Fatalf("an authenticated request past 300 idle connections: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("an authenticated request past 300 idle connections: %d", resp.StatusCode)
	}
}

// --metrics-addr serves the dashboard's /metrics with no token, for a
// Prometheus on a private network, and nothing else; the dashboard's own
// /metrics still wants the token.
func TestDashboardMetricsAddr(t *testing.T) {
	t.Parallel()
	const token = "cli-token-0123456789abcdef"
	metrics := evaltest.FreeAddr(t)
	base := startDashboard(t, evaltest.URL(t), "--", "--auth-token", token, "--metrics-addr", metrics)
	for _, tc := range []struct {
		url, want string
		code      int
	}{
		{"http://" + metrics + "/metrics", "evalpool_executors", http.StatusOK},
		{"http://" + metrics + "/healthz", "ok", http.StatusOK},
		{"http://" + metrics + "/api/v1/runs", "", http.StatusNotFound},
		{base + "/metrics", "", http.StatusUnauthorized},
	} {
		code, body := hostDo(t, http.MethodGet, tc.url, "", "")
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s without a token: %d, want %d with %q: %.200s", tc.url, code, tc.code, tc.want, body)
		}
	}
}
