package main

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// TestCommandsAtMaxmemory runs the operator's commands on a real Redis
// filled to its maxmemory (noeviction): the reads answer and pool check
// passes, a submit fails with one line naming the cause, and a run submitted
// before says how it stands.
func TestCommandsAtMaxmemory(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: evaltest.FullRedisArgs})
	url := srv.URL()
	cli := func(args ...string) result { return runCLI(t, url, "full", args...) }
	_, urls := startExecutors(t, 1, refexec.Options{})
	if r := cli("pool", "add", urls[0]); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	suite := writeSuite(t, `{"n":1}`, `{"n":2}`)
	if r := cli("run", "submit", "--file", suite, "--name", "before"); r.code != 0 {
		t.Fatalf("submit: %+v", r)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	evaltest.FillRedis(t, rdb)

	for _, args := range [][]string{{"pool", "status"}, {"pool", "check"}, {"run", "status", "before"}, {"run", "summary", "before"}, {"run", "list"}} {
		if r := cli(args...); r.code != 0 {
			t.Errorf("%s at maxmemory: %+v", strings.Join(args, " "), r)
		}
	}
	r := cli("run", "submit", "--file", suite, "--name", "after")
	if r.code != exitError || !strings.Contains(r.stderr, "redis is full") || strings.Contains(r.stderr, "OOM") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("submit at maxmemory: %+v; want exit 1 and one line saying Redis is full", r)
	}
}
