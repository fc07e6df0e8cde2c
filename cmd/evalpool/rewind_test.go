package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/refexec"
)

// Redis restarted from a snapshot taken before the evals were enqueued,
// while their producer waits for them (`run submit --wait`, `enqueue
// --wait`): they are gone, and the producer, which holds them, enqueues them
// again by their IDs. The rewind costs time, not evals.
func TestWaitingProducerSurvivesARewind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		// ended is what says every eval passed.
		ended func(t *testing.T, cli func(...string) result, r result)
	}{
		{"run submit", []string{"run", "submit", "--name", "rewound", "--wait", "--file"}, func(t *testing.T, cli func(...string) result, _ result) {
			if s := runSummary(t, cli, "rewound"); s.Passed != 12 {
				t.Fatalf("summary after the rewind: %+v", s.Counts)
			}
		}},
		{"enqueue", []string{"enqueue", "--wait", "--file"}, func(t *testing.T, _ func(...string) result, r result) {
			if !strings.Contains(r.stderr, "12 evals: 12 passed") {
				t.Fatalf("enqueue --wait after the rewind: %q", lastLines(r.stderr, 2))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := evaltest.StartT(t, evaltest.Options{})
			url := srv.URL()
			rdb := srv.Client(t)
			cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
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
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			done := make(chan result, 1)
			go func() {
				var out, errb bytes.Buffer
				code := run(ctx, append(append([]string{"--redis", url}, tt.args...), writeSuite(t, specs...)), &out, &errb)
				done <- result{code, out.String(), errb.String()}
			}()
			evaltest.Eventually(t, 20*time.Second, "no eval ended", func() bool {
				return rdb.ZCard(t.Context(), "asynq:{evals}:completed").Val() >= 3
			})
			if err := srv.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.code != 0 || !strings.Contains(r.stderr, "enqueued again") {
				t.Fatalf("%s across a rewind: exit %d, stderr %q; want every eval passed, and a word of the rewind", tt.name, r.code, lastLines(r.stderr, 4))
			}
			tt.ended(t, cli, r)
		})
	}
}
