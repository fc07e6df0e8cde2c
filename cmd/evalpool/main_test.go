package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/pool"
)

// TestMain doubles as the evalpool binary: with EVALPOOL_TEST_MAIN=1 the
// test binary runs the command line in its arguments, so that tests can run
// real evalpool processes (and SIGKILL them) without building anything.
func TestMain(m *testing.M) {
	if os.Getenv("EVALPOOL_TEST_MAIN") == "1" {
		main()
	}
	evaltest.Main(m)
}

type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs one command line in-process against the test's Redis and pool.
func runCLI(t *testing.T, redisURL, poolName string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"--redis", redisURL, "--pool", poolName}, args...)
	code := run(t.Context(), full, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func TestPoolCommands(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	cli := func(args ...string) result { return runCLI(t, url, name, args...) }
	expect := func(r result, code int, stdout string) {
		t.Helper()
		if r.code != code || !strings.Contains(r.stdout, stdout) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and stdout holding %q", r.code, r.stdout, r.stderr, code, stdout)
		}
	}

	expect(cli("pool", "add", "--no-probe", "http://e1", "http://e1/"), 0, "added http://e1\nalready_registered http://e1\n")
	r := cli("pool", "acquire", "--eval", "eval-a", "--json")
	expect(r, 0, `"url": "http://e1"`)
	var lease pool.Lease
	if err := json.Unmarshal([]byte(r.stdout), &lease); err != nil {
		t.Fatalf("acquire --json: stdout is not one JSON lease: %v: %q", err, r.stdout)
	}
	expect(cli("pool", "acquire", "--eval", "eval-b"), 3, "")
	expect(cli("pool", "status"), 0, "1 leased")

	r = cli("pool", "status", "--json")
	var st pool.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st.Executors) != 1 || st.Executors[0].Lease.EvalID != "eval-a" {
		t.Fatalf("status --json = %+v, %v", st, err)
	}
	if strings.Contains(r.stdout, lease.Token) {
		t.Fatal("status shows the lease token, the capability to release it")
	}

	expect(cli("pool", "release", "http://e1", "--token", lease.Token), 0, "released\n")
	// By hand, a second release is no designed path of the lease: the alert.
	r = cli("pool", "release", "http://e1", "--token", lease.Token, "--json")
	expect(r, 0, `"double": true`)
	if !strings.Contains(r.stderr, "double release detected") {
		t.Fatalf("a second release by hand logged no double release: %q", r.stderr)
	}
	expect(cli("pool", "check"), 0, "ok")
	expect(cli("pool", "reap"), 0, "reaped 0")
	expect(cli("pool", "remove", "http://e1"), 0, "removed http://e1")
	expect(cli("pool", "status"), 0, "0 executors")
}

// A wrong token is not an error: the release is absorbed and says so.
func TestWrongTokenIsAbsorbed(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	runCLI(t, url, name, "pool", "add", "--no-probe", "http://e1")
	if r := runCLI(t, url, name, "pool", "release", "http://e1", "--token", "forged"); r.code != 0 || r.stdout != "already_in_pool\n" {
		t.Fatalf("forged release of an idle executor: %+v", r)
	}
	runCLI(t, url, name, "pool", "acquire", "--eval", "a")
	if r := runCLI(t, url, name, "pool", "release", "http://e1", "--token", "forged"); r.code != 0 || r.stdout != "stale_lease\n" {
		t.Fatalf("forged release of a leased executor: %+v", r)
	}
	if r := runCLI(t, url, name, "pool", "release", "http://nobody", "--token", "forged"); r.code != 0 || r.stdout != "not_leased\n" {
		t.Fatalf("release of an unknown executor: %+v", r)
	}
	if r := runCLI(t, url, name, "pool", "status", "--json"); !strings.Contains(r.stdout, `"leased": 1`) {
		t.Fatalf("a forged release changed the pool: %s", r.stdout)
	}
}

// Data of another type under a pool's keys: pool check names the key (exit
// 3); a command that meets it fails in one clear line (exit 1).
func TestForeignDataInTheCLI(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	if r := runCLI(t, url, name, "pool", "add", "--no-probe", "http://e0"); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	key := keys.ForPool(name).Available()
	if err := client.Set(t.Context(), key, "hello", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, url, name, "pool", "check"); r.code != 3 || !strings.Contains(r.stdout, key+" holds a string, not a zset") {
		t.Errorf("pool check over foreign data: %+v", r)
	}
	for _, args := range [][]string{{"pool", "add", "--no-probe", "http://e1"}, {"pool", "acquire", "--eval", "a"}, {"pool", "status"}} {
		r := runCLI(t, url, name, args...)
		if r.code != 1 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "foreign data") {
			t.Errorf("%v over foreign data: %+v", args, r)
		}
	}
}

func TestCheckFailsWithExit3(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	runCLI(t, url, name, "pool", "add", "--no-probe", "http://e1")
	if err := client.Del(t.Context(), keys.ForPool(name).Available()).Err(); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, url, name, "pool", "check")
	if r.code != 3 || !strings.Contains(r.stdout, "lost") || !strings.Contains(r.stderr, "1 violations") {
		t.Fatalf("check of a broken pool: %+v", r)
	}
}

// A lost label index fails pool check (invariant 8), and pool check
// --repair rebuilds it from the records.
func TestCheckRepairRebuildsALostLabelIndex(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	runCLI(t, url, name, "pool", "add", "--no-probe", "--label", "gpu=a100", "http://e1")
	if err := client.Del(t.Context(), keys.ForPool(name).LabelledFor("gpu=a100")).Err(); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, url, name, "pool", "check"); r.code != 3 || !strings.Contains(r.stdout, "invariant 8") {
		t.Fatalf("check of a lost label index: %+v", r)
	}
	if r := runCLI(t, url, name, "pool", "check", "--repair"); r.code != 0 || !strings.Contains(r.stdout, "rebuilt the label indexes of 1 executors") || !strings.Contains(r.stdout, "ok") {
		t.Fatalf("check --repair: %+v", r)
	}
}

// Bad input: one clear line on stderr, the right exit code, nothing changed.
func TestBadInput(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"pool", "add", "http://ok", "not a url"}, 2, `executor URL "not a url"`},
		{[]string{"pool", "add", "ftp://x"}, 2, "scheme must be http or https"},
		{[]string{"pool", "add"}, 2, "requires at least 1 arg"},
		{[]string{"pool", "add", "--label", "nokey", "http://ok"}, 2, "want key=value"},
		{[]string{"pool", "remove", "http://unknown"}, 1, "unknown executor: http://unknown"},
		{[]string{"pool", "acquire"}, 2, "--eval is required"},
		{[]string{"pool", "acquire", "--eval", "x", "--ttl", "-1s"}, 2, "lease TTL must be from 1ms to 24h0m0s"},
		{[]string{"pool", "acquire", "--eval", "x", "--ttl", "1000h"}, 2, "lease TTL must be from 1ms to 24h0m0s, got 1000h0m0s"},
		{[]string{"pool", "acquire", "--eval", "x", "--ttl", "soon"}, 2, "invalid argument"},
		{[]string{"pool", "release", "http://ok"}, 2, "--token is required"},
		{[]string{"pool", "release", "http://ok", "--token", "t", "extra"}, 2, "accepts 1 arg"},
		{[]string{"pool", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"--log-format", "xml", "pool", "status"}, 2, "--log-format must be json or console"},
		{[]string{"--redis", "http://nope", "pool", "status"}, 2, "invalid URL scheme"},
		{[]string{"--redis", "redis://127.0.0.1:1/0", "pool", "status"}, 1, "connection refused"},
		{[]string{"pool", "add", "http://bad host"}, 2, "invalid"},
		{[]string{"enqueue", "--spec", `{"a":`}, 1, "--spec is not valid JSON"},
		{[]string{"enqueue", "--spec", `"` + strings.Repeat("x", 2<<20) + `"`}, 1, "more than"},
		{[]string{"enqueue", "--spec", "{}", "--count", "many"}, 2, "invalid argument"},
		{[]string{"enqueue", "--spec", "{}", "--timeout", "banana"}, 2, "invalid argument"},
		{[]string{"enqueue", "--file", "/nonexistent/evals.jsonl"}, 1, "no such file"},
		{[]string{"eval", "result"}, 2, "requires at least 1 arg"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " ")[:min(60, len(strings.Join(tt.args, " ")))], func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"--redis", url, "--pool", name}, tt.args...)
			code := run(t.Context(), args, &out, &errb)
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			last := lines[len(lines)-1]
			if code != tt.code || !strings.Contains(last, tt.stderr) || !strings.HasPrefix(last, "evalpool: ") || len(last) > 500 {
				t.Fatalf("exit %d, stderr %.300q; want exit %d and one short line holding %q", code, errb.String(), tt.code, tt.stderr)
			}
		})
	}
	if n, err := client.Exists(t.Context(), keys.ForPool(name).Executors()).Result(); err != nil || n != 0 {
		t.Fatalf("bad input left state behind: %d keys, %v", n, err)
	}
	if n, err := client.Keys(t.Context(), "asynq:*").Result(); err != nil || len(n) != 0 {
		t.Fatalf("bad input enqueued something: %v, %v", n, err)
	}
}

// A malformed line rejects the whole file before anything is enqueued.
func TestEnqueueFileIsAllOrNothing(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	if r := runCLI(t, url, "default", "pool", "add", "--no-probe", "http://e1"); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := `{"eval_id":"a","spec":{"q":1}}` + "\n\n" + `{"spec":[1,2]}` + "\n"
	tests := []struct {
		name, content, want string
	}{
		{"malformed", good + `{"eval_id":"c","spec":` + "\n", "bad.jsonl:4: bad payload"},
		{"no spec", good + `{"eval_id":"c"}` + "\n", `bad.jsonl:4: bad payload: "spec" is missing`},
		{"unknown field", good + `{"eval_id":"c","spec":1,"prio":9}` + "\n", `bad.jsonl:4: bad payload: want {"eval_id"?, "spec", "require"?, "group"?}: json: unknown field "prio"`},
		{"duplicate ID", good + `{"eval_id":"a","spec":1}` + "\n", `bad.jsonl:4: bad payload: eval ID "a" already used on line 1`},
		{"bad ID", `{"eval_id":"has space","spec":1}`, "holds spaces"},
		{"empty", "\n\n", "no evals in the file"},
	}
	for _, tt := range tests {
		path := write("bad.jsonl", tt.content)
		r := runCLI(t, url, "default", "enqueue", "--file", path)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, tt.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%s: %+v; want exit 1, nothing on stdout, one line holding %q", tt.name, r, tt.want)
		}
	}
	opt, _ := redis.ParseURL(url)
	own := redis.NewClient(opt)
	defer own.Close()
	if keys, _ := own.Keys(t.Context(), "asynq:*").Result(); len(keys) != 0 {
		t.Fatalf("rejected files left Asynq keys behind: %v", keys)
	}

	r := runCLI(t, url, "default", "enqueue", "--file", write("good.jsonl", good))
	if r.code != 0 || len(strings.Fields(r.stdout)) != 2 || !strings.HasPrefix(r.stdout, "a\n") {
		t.Fatalf("good file: %+v", r)
	}
	r = runCLI(t, url, "default", "eval", "status", "a")
	if r.code != 0 || !strings.Contains(r.stdout, "pending") {
		t.Fatalf("eval status: %+v", r)
	}
	r = runCLI(t, url, "default", "eval", "result", "a")
	if r.code != 3 {
		t.Fatalf("result of a pending eval: %+v, want exit 3", r)
	}
	r = runCLI(t, url, "default", "eval", "status", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "eval not found: nope") {
		t.Fatalf("status of an unknown eval: %+v", r)
	}
	r = runCLI(t, url, "default", "enqueue", "--file", write("again.jsonl", `{"eval_id":"a","spec":{}}`))
	if r.code != 0 || !strings.Contains(r.stderr, "eval a is already enqueued") {
		t.Fatalf("re-enqueue: %+v", r)
	}
	for _, args := range [][]string{
		{"enqueue"},
		{"enqueue", "--spec", "{}", "--file", "x"},
		{"enqueue", "--spec", "{}", "--count", "0"},
		{"enqueue", "--spec", "{}", "--timeout", "300ms"},
	} {
		if r := runCLI(t, url, "default", args...); r.code != 2 {
			t.Errorf("%v: %+v, want exit 2", args, r)
		}
	}
	if r := runCLI(t, url, "default", "enqueue", "--spec", "{nope"); r.code != 1 || !strings.Contains(r.stderr, "--spec is not valid JSON") {
		t.Errorf("bad --spec: %+v", r)
	}
}

// --redis naming several nodes is a Redis Cluster.
func TestPoolCommandsOnACluster(t *testing.T) {
	t.Parallel()
	addrs := evaltest.StartCluster(t, 3)
	url := "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2]
	for _, name := range []string{"alpha", "beta", "gamma"} {
		if r := runCLI(t, url, name, "pool", "add", "--no-probe", "http://e1", "http://e2"); r.code != 0 {
			t.Fatalf("pool add on the cluster: %+v", r)
		}
		r := runCLI(t, url, name, "pool", "acquire", "--eval", "x", "--json")
		var l pool.Lease
		if err := json.Unmarshal([]byte(r.stdout), &l); r.code != 0 || err != nil {
			t.Fatalf("acquire on the cluster: %+v", r)
		}
		if r := runCLI(t, url, name, "pool", "release", l.URL, "--token", l.Token); r.code != 0 || r.stdout != "released\n" {
			t.Fatalf("release on the cluster: %+v", r)
		}
		if r := runCLI(t, url, name, "pool", "check"); r.code != 0 {
			t.Fatalf("check on the cluster: %+v", r)
		}
	}
}
