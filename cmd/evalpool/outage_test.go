package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// A waiting command rides out a Redis that goes away under it and comes
// back with its data: it says once that Redis fails
// and once that it is back, and exits 0 when the evals end. A CI gate does
// not fail on a blip the system survives.
func TestWaitRidesOutARedisOutage(t *testing.T) {
	t.Parallel()
	const evals = 12
	tests := []struct {
		name string
		// wait starts the waiting command line, given the suite.
		wait func(t *testing.T, cli func(...string) result, suite string) []string
		// submitted is what the waiting command prints once every eval
		// is enqueued, and ended what it says when every eval passed.
		submitted, ended string
	}{
		{"run submit --wait", func(_ *testing.T, _ func(...string) result, suite string) []string {
			return []string{"run", "submit", "--name", "blip", "--wait", "--file", suite}
		}, "blip\n", "passed 12, failed 0, errored 0"},
		{"enqueue --wait", func(_ *testing.T, _ func(...string) result, suite string) []string {
			return []string{"enqueue", "--wait", "--file", suite}
		}, "k12\n", "12 evals: 12 passed"},
		{"eval wait", func(t *testing.T, cli func(...string) result, suite string) []string {
			r := cli("enqueue", "--file", suite)
			if r.code != 0 {
				t.Fatalf("enqueue: %+v", r)
			}
			return append([]string{"eval", "wait"}, strings.Fields(r.stdout)...)
		}, "", "12 evals: 12 passed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Every write on disk before it is answered: the Redis that
			// comes back has all the data, and this is an outage, not a
			// rewind.
			srv := evaltest.StartT(t, evaltest.Options{Args: []string{"--appendonly", "yes", "--appendfsync", "always"}})
			url := srv.URL()
			cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
			_, urls := startExecutors(t, 2, refexec.Options{Latency: 300 * time.Millisecond})
			if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
				t.Fatalf("pool add: %+v", r)
			}
			specs := make([]string, evals)
			for i := range specs {
				specs[i] = `{"task":"add"}`
			}
			args := tt.wait(t, cli, writeSuite(t, specs...))

			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			stdout, stderr := &evaltest.LogBuffer{}, &evaltest.LogBuffer{}
			done := make(chan result, 1)
			go func() {
				code := run(ctx, append([]string{"--redis", url}, args...), stdout, stderr)
				done <- result{code, stdout.String(), stderr.String()}
			}()
			// The worker starts once Redis is back: the outage is the
			// waiter's alone to ride out, however long the worker's own
			// recovery of the attempts Redis lost under it takes.
			evaltest.Eventually(t, 10*time.Second, "the evals were never submitted", func() bool {
				return strings.Contains(stdout.String(), tt.submitted)
			})
			if err := srv.Kill(); err != nil {
				t.Fatal(err)
			}
			gaveUp := func() {
				t.Helper()
				select {
				case r := <-done:
					t.Fatalf("%s gave up while Redis was down: exit %d, stderr %q", tt.name, r.code, lastLines(r.stderr, 3))
				default:
				}
			}
			evaltest.Eventually(t, 10*time.Second, "the waiting command never said Redis fails", func() bool {
				gaveUp()
				return stderr.Count("Redis fails") > 0
			})
			// Down for a while past the first failure: several steps of
			// the waiter's backoff, and longer than one blocked call.
			time.Sleep(3 * time.Second)
			gaveUp()
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			logs := startWorker(t, url, "--concurrency", "2", "--poll-interval", "20ms", "--cleanup", "inline")
			r := <-done
			if r.code != 0 || !strings.Contains(r.stderr+r.stdout, tt.ended) {
				t.Log(lastLines(logs.String(), 10))
				t.Fatalf("%s across an outage: exit %d, stderr %q; want exit 0 and every eval passed", tt.name, r.code, lastLines(r.stderr, 4))
			}
			if n, m := strings.Count(r.stderr, "Redis fails"), strings.Count(r.stderr, "Redis is back"); n != 1 || m != 1 {
				t.Fatalf("%s said %d times that Redis fails and %d times that it is back, want once each: %q", tt.name, n, m, r.stderr)
			}
		})
	}
}
