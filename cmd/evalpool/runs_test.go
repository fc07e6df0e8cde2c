package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	evalrun "github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// writeSuite writes a JSON Lines suite of evals, one line per spec, keyed
// k1, k2, ...
func writeSuite(t *testing.T, specs ...string) string {
	t.Helper()
	var b strings.Builder
	for i, spec := range specs {
		fmt.Fprintf(&b, `{"eval_id":"k%d","spec":%s}`+"\n", i+1, spec)
	}
	path := filepath.Join(t.TempDir(), "suite.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runSummary(t *testing.T, cli func(...string) result, args ...string) evalrun.Summary {
	t.Helper()
	r := cli(append([]string{"run", "summary", "--json"}, args...)...)
	var s evalrun.Summary
	if err := json.Unmarshal([]byte(r.stdout), &s); r.code != 0 || err != nil {
		t.Fatalf("run summary: %+v, %v", r, err)
	}
	return s
}

// TestRunOfGradedEvals: 300 evals, a fifth graded failed at random on 3
// executors: the summary's counts are the executors' own, and the exit
// code follows --min-pass-rate.
func TestRunOfGradedEvals(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	servers, urls := startExecutors(t, 3, refexec.Options{Latency: time.Millisecond, GradeFailRate: 0.2})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--concurrency", "8", "--poll-interval", "20ms", "--cleanup", "inline")
	specs := make([]string, 300)
	for i := range specs {
		specs[i] = `{"task":"add"}`
	}
	suite := writeSuite(t, specs...)
	r := cli("run", "submit", "--file", suite, "--name", "graded", "--wait", "--min-pass-rate", "0.9")
	if r.code != 1 || strings.TrimSpace(r.stdout) == "" || !strings.Contains(r.stderr, "under the 90.0% required") {
		t.Fatalf("run under its min pass rate: exit %d, stdout %q, stderr %q; want exit 1", r.code, r.stdout, lastLines(r.stderr, 3))
	}
	s := runSummary(t, cli, "graded")
	var passed, failed int64
	for _, srv := range servers {
		st := srv.Stats()
		passed, failed = passed+st.Passed, failed+st.Failed
	}
	if int64(s.Passed) != passed || int64(s.Failed) != failed || s.Passed+s.Failed != 300 || s.Errored+s.Cancelled+s.Pending+s.Running != 0 {
		t.Fatalf("summary %+v; the executors passed %d and failed %d", s.Counts, passed, failed)
	}
	if s.PassRate < 0.7 || s.PassRate > 0.9 || len(s.Failures) != s.Failed || s.MeanScore == nil {
		t.Fatalf("pass rate %.3f, %d failures listed, mean score %v", s.PassRate, len(s.Failures), s.MeanScore)
	}
	if r := cli("run", "summary", "graded", "--min-pass-rate", "0.7"); r.code != 0 {
		t.Fatalf("summary --min-pass-rate 0.7: %+v", r)
	}
	if r := cli("run", "summary", "graded", "--min-pass-rate", "0.9"); r.code != 1 {
		t.Fatalf("summary --min-pass-rate 0.9: %+v", r)
	}
	r = cli("run", "results", "graded", "--format", "csv")
	if lines := strings.Count(r.stdout, "\n"); r.code != 0 || lines != 301 {
		t.Fatalf("results csv: exit %d, %d lines", r.code, lines)
	}
	if r := cli("run", "list"); r.code != 0 || !strings.Contains(r.stdout, "graded") {
		t.Fatalf("run list: %+v", r)
	}
	// The same rule for single evals: a graded failure fails eval result.
	var failedID string
	for _, f := range s.Failures {
		failedID = evalrun.EvalID("graded", f.Key)
	}
	if r := cli("eval", "result", failedID); r.code != 1 {
		t.Fatalf("eval result of a failed eval: %+v", r)
	}
}

// TestRunCompare: --compare lists exactly the evals whose status changed.
func TestRunCompare(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--concurrency", "4", "--poll-interval", "20ms")
	if r := cli("run", "submit", "--file", gradedSuite(t, 6, 7, 8), "--name", "before", "--wait", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("before: %+v", r)
	}
	if r := cli("run", "submit", "--file", gradedSuite(t, 1, 7, 8), "--name", "after", "--wait", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("after: %+v", r)
	}
	s := runSummary(t, cli, "after", "--compare", "before")
	if !slices.Equal(s.Compare.NewlyFailing, []string{"k1"}) || !slices.Equal(s.Compare.NewlyPassing, []string{"k6"}) {
		t.Fatalf("compare: %+v", s.Compare)
	}
	if r := cli("run", "submit", "--file", gradedSuite(t), "--name", "before"); r.code == 0 || !strings.Contains(r.stderr, "run exists") {
		t.Fatalf("a second run of one name: %+v", r)
	}
}

// TestRunCancel: 50 pending and 3 running evals cancelled: none of the
// pending reaches an executor, the running ones stop there within a
// second, every executor comes back.
func TestRunCancel(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	// The executors note every eval that reaches them.
	var mu sync.Mutex
	reached := map[string]bool{}
	var servers []*refexec.Server
	var urls []string
	for range 3 {
		s, err := refexec.New(refexec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == executor.PathEvals {
				body, _ := io.ReadAll(r.Body)
				var req executor.Request
				_ = json.Unmarshal(body, &req)
				mu.Lock()
				reached[req.EvalID] = true
				mu.Unlock()
				r.Body = io.NopCloser(bytes.NewReader(body))
			}
			s.ServeHTTP(w, r)
		}))
		t.Cleanup(ts.Close)
		servers, urls = append(servers, s), append(urls, ts.URL)
	}
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--concurrency", "3", "--poll-interval", "20ms", "--cleanup", "inline")
	specs := make([]string, 53)
	for i := range specs {
		specs[i] = `{"sleep_ms":30000}`
	}
	if r := cli("run", "submit", "--file", writeSuite(t, specs...), "--name", "long"); r.code != 0 {
		t.Fatalf("submit: %+v", r)
	}
	evaltest.Eventually(t, 10*time.Second, "three evals never ran", func() bool {
		r := cli("run", "status", "long")
		return strings.Contains(r.stdout, "running 3, pending 50")
	})
	r := cli("run", "cancel", "long")
	if r.code != 0 || !strings.Contains(r.stdout, "cancelled 50 pending and 3 running") {
		t.Fatalf("run cancel: %+v", r)
	}
	cancelled := time.Now()
	evaltest.Eventually(t, 5*time.Second, "the running evals never stopped at their executors", func() bool {
		for _, s := range servers {
			if s.Stats().Running {
				return false
			}
		}
		return true
	})
	if took := time.Since(cancelled); took > time.Second {
		t.Errorf("the running evals stopped %s after the cancel, want within a second", took)
	}
	evaltest.Eventually(t, 10*time.Second, "the executors never came back", func() bool {
		r := cli("pool", "status", "--json")
		return strings.Contains(r.stdout, `"available": 3`)
	})
	// Once no task of the run is pending, active or scheduled, no eval that
	// had not reached an executor can: the only tasks left are the three
	// cancelled while running, which Asynq puts back for a retry (a task
	// cancelled mid-run is not the handler's answer) and whose next acquire
	// the pool refuses.
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	evaltest.Eventually(t, 10*time.Second, "the cancelled run's pending tasks never left the queue", func() bool {
		q, err := insp.GetQueueInfo(tasks.QueueEvals)
		return err == nil && q.Pending+q.Active+q.Scheduled == 0
	})
	retried, err := insp.ListRetryTasks(tasks.QueueEvals)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, task := range retried {
		if !reached[task.ID] {
			t.Errorf("eval %s waits for a retry though it never ran: only the running evals may be left", task.ID)
		}
	}
	mu.Unlock()
	mu.Lock()
	if len(reached) != 3 {
		t.Errorf("%d evals reached an executor, want the 3 running when the run was cancelled: %v", len(reached), reached)
	}
	mu.Unlock()
	s := runSummary(t, cli, "long")
	if s.Cancelled != 53 || s.Done() != 53 {
		t.Fatalf("summary %+v", s.Counts)
	}
	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
}

// TestInterruptedWaitExits130: Ctrl-C on a wait stops the wait, not the
// evals, says so, and exits 130 as a shell expects.
func TestInterruptedWaitExits130(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	_, urls := startExecutors(t, 1, refexec.Options{})
	if r := runCLI(t, url, "default", append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	// No worker: the evals wait in the queue until the interrupt.
	for _, args := range [][]string{
		{"enqueue", "--spec", "{}", "--count", "2", "--wait"},
		{"run", "submit", "--file", writeSuite(t, "{}", "{}"), "--name", "waited", "--wait"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		var out, errb bytes.Buffer
		code := run(ctx, append([]string{"--redis", url}, args...), &out, &errb)
		cancel()
		if code != exitInterrupted || !strings.Contains(errb.String(), "go on") {
			t.Errorf("%v interrupted: exit %d, stderr %q; want 130 and how to resume", args, code, errb.String())
		}
	}
}
