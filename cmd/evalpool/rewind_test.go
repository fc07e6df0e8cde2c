package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/refexec"
)

// Redis restarted from a snapshot taken before a run was submitted, while
// `run submit --wait` follows it: the run and its evals are gone, and the
// submitter, which holds the evals, enqueues them again by their IDs. The
// rewind costs time, not evals.
func TestRunSubmitWaitSurvivesARewind(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	url := srv.URL()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	cli := func(args ...string) result { return evalpool(t, url, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{Latency: 300 * time.Millisecond})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	logs := startWorker(t, url, "--concurrency", "2", "--poll-interval", "20ms", "--cleanup", "inline")
	defer func() {
		if t.Failed() {
			t.Log(logs)
		}
	}()
	evaltest.Eventually(t, 10*time.Second, "the worker never ticked", func() bool {
		return rdb.HGet(t.Context(), keys.ForPool("default").Clock(), "gen").Val() != ""
	})
	if err := rdb.Save(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	specs := make([]string, 12)
	for i := range specs {
		specs[i] = `{"task":"add"}`
	}
	suite := writeSuite(t, specs...)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	done := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		code := run(ctx, []string{"--redis", url, "run", "submit", "--file", suite, "--name", "rewound", "--wait"}, &out, &errb)
		done <- result{code, out.String(), errb.String()}
	}()
	evaltest.Eventually(t, 20*time.Second, "no eval of the run ended", func() bool {
		return rdb.HLen(t.Context(), keys.ForRun("rewound").Done()).Val() >= 3
	})
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != 0 {
		k := keys.ForRun("rewound")
		t.Logf("the run's counts %v, ends recorded %v", rdb.HGetAll(t.Context(), k.Counts()).Val(), rdb.HKeys(t.Context(), k.Done()).Val())
	}
	if r.code != 0 || !strings.Contains(r.stderr, "enqueued again") {
		t.Fatalf("run submit --wait across a rewind: exit %d, stderr %q; want every eval passed, and a word of the rewind", r.code, lastLines(r.stderr, 4))
	}
	if s := runSummary(t, cli, "rewound"); s.Passed != len(specs) {
		t.Fatalf("summary after the rewind: %+v", s.Counts)
	}
}
