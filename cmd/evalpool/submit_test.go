package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// nothingSubmitted fails the test if rdb holds a task or a run.
func nothingSubmitted(t *testing.T, rdb *redis.Client, what string) {
	t.Helper()
	for _, pattern := range []string{"asynq:*", "evalpool:run*"} {
		if ks, err := rdb.Keys(t.Context(), pattern).Result(); err != nil || len(ks) != 0 {
			t.Fatalf("%s left %v (%v) behind", what, ks, err)
		}
	}
}

// A submit to a pool no executor is registered in (a misspelt --pool, the
// wrong Redis or DB) would wait for ever: it is refused at once, in one line
// naming the pool and the Redis, and changes nothing, unless
// --allow-empty-pool says the executors are to come.
func TestSubmitToAnEmptyPoolIsRefused(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	rdb := srv.Client(t)
	if r := runCLI(t, srv.URL(), "default", "pool", "add", "--no-probe", "http://e1"); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	suite := writeSuite(t, "{}", "{}")
	commands := []struct {
		name string
		args []string
	}{
		{"run submit", []string{"run", "submit", "--file", suite, "--name", "lost"}},
		{"enqueue --spec", []string{"enqueue", "--spec", "{}", "--count", "2"}},
		{"enqueue --file", []string{"enqueue", "--file", suite}},
		{"enqueue --require", []string{"enqueue", "--spec", "{}", "--require", "gpu=a100"}},
	}
	places := []struct {
		name, url, pool string
	}{
		{"misspelt pool", srv.URL(), "defualt"},
		{"wrong DB", "redis://" + srv.Addr + "/3", "default"},
	}
	for _, c := range commands {
		for _, p := range places {
			r := runCLI(t, p.url, p.pool, c.args...)
			want := "no executor registered in pool " + p.pool + " on Redis " + p.url
			if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "--allow-empty-pool") {
				t.Errorf("%s, %s: %+v; want exit 1, nothing on stdout, one line holding %q and --allow-empty-pool", c.name, p.name, r, want)
			}
		}
	}
	nothingSubmitted(t, rdb, "a refused submit")
	other := redis.NewClient(&redis.Options{Addr: srv.Addr, DB: 3})
	defer other.Close()
	nothingSubmitted(t, other, "a refused submit to DB 3")

	for _, c := range commands[:3] {
		if r := runCLI(t, srv.URL(), "later", append(c.args, "--allow-empty-pool")...); r.code != 0 {
			t.Errorf("%s --allow-empty-pool: %+v; want it submitted", c.name, r)
		}
	}
	if r := runCLI(t, srv.URL(), "later", "eval", "status", "lost/k1"); r.code != 0 || !strings.Contains(r.stdout, "pending") {
		t.Errorf("eval status of the run allowed in an empty pool: %+v", r)
	}
}

// Input that is not UTF-8 is refused, naming its line in a file, before
// anything is submitted: JSON would carry its bytes to the grader as they
// are, or turn them into U+FFFD.
func TestNonUTF8InputIsRefused(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	rdb := srv.Client(t)
	cli := func(args ...string) result { return runCLI(t, srv.URL(), "default", args...) }
	if r := cli("pool", "add", "--no-probe", "http://e1"); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	file := func(lines ...string) string {
		p := filepath.Join(t.TempDir(), "suite.jsonl")
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := `{"eval_id":"k1","spec":{"q":"caf` + "\u00e9" + `"}}`
	badSpec := file(good, "", `{"eval_id":"k2","spec":{"q":"bad`+"\xff\xfe"+`"}}`)
	badID := file(good, `{"eval_id":"k`+"\xff"+`","spec":{}}`)
	badLabel := file(good, `{"spec":{},"require":{"gpu":"a`+"\xc3"+`"}}`)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"run submit, spec", []string{"run", "submit", "--file", badSpec}, "suite.jsonl:3: bad payload: not valid UTF-8"},
		{"run submit, eval ID", []string{"run", "submit", "--file", badID}, "suite.jsonl:2: bad payload: not valid UTF-8"},
		{"enqueue, spec", []string{"enqueue", "--file", badSpec}, "suite.jsonl:3: bad payload: not valid UTF-8"},
		{"enqueue, eval ID", []string{"enqueue", "--file", badID}, "suite.jsonl:2: bad payload: not valid UTF-8"},
		{"enqueue, label", []string{"enqueue", "--file", badLabel}, "suite.jsonl:2: bad payload: not valid UTF-8"},
		{"enqueue --spec", []string{"enqueue", "--spec", `{"q":"bad` + "\xff" + `"}`}, "--spec is not valid UTF-8"},
	}
	for _, tt := range tests {
		r := cli(tt.args...)
		if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("%s: %+v; want exit 1, nothing on stdout, one line holding %q", tt.name, r, tt.want)
		}
	}
	nothingSubmitted(t, rdb, "non-UTF-8 input")
	if r := cli("run", "submit", "--file", file(good), "--name", "utf8"); r.code != 0 {
		t.Fatalf("a UTF-8 suite: %+v", r)
	}
}
