package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// submitSuite submits run name of evals keyed by keys, of the stand-in's
// grades (serve), and returns its suite.
func submitSuite(t *testing.T, b *bundle, name string, epochs int, grades map[string]string, keys ...string) []tasks.Eval {
	t.Helper()
	var suite []tasks.Eval
	for _, key := range keys {
		suite = append(suite, tasks.Eval{ID: key, Spec: json.RawMessage(fmt.Sprintf(`{"grade":%q}`, grades[key]))})
	}
	if _, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, client.RunRequest{Name: name, Evals: suite, Epochs: epochs, Options: tasks.EvalOptions{MaxRetry: 2}}); err != nil {
		t.Fatal(err)
	}
	return suite
}

// endAll waits for every eval of run name to end in Asynq and records
// each end in the run, and admits the next, as the worker would (the
// stand-in does not).
func endAll(t *testing.T, b *bundle, name string) {
	t.Helper()
	r, err := b.runs.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range r.Keys {
		if _, ok, _ := b.runs.Record(t.Context(), name, key); ok {
			continue
		}
		id := run.EvalID(name, key)
		var info *asynq.TaskInfo
		evaltest.Eventually(t, 10*time.Second, "eval "+id+" ended", func() bool {
			if _, err := client.Admit(t.Context(), b.aq, b.insp, b.pool, b.runs); err != nil {
				t.Fatal(err)
			}
			info, err = client.Lookup(b.insp, b.pool.Name(), id)
			return err == nil && (info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived)
		})
		e, err := tasks.ParseEval(info.Payload)
		if err != nil {
			t.Fatal(err)
		}
		rec := run.Record{Key: key, Status: run.Errored, Error: info.LastErr, Retries: info.Retried, Epoch: e.Epoch, At: time.Now()}
		if info.State == asynq.TaskStateCompleted {
			var res tasks.EvalResult
			if err := json.Unmarshal(info.Result, &res); err != nil {
				t.Fatal(err)
			}
			rec = res.Record(e, time.Now())
		}
		if _, err := b.runs.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRetryRun retries a run's errored evals, then its failed and errored
// ones, under the same eval IDs and with the run's retries: the run's
// counts go back by them, and up again as they end again.
func TestRetryRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	serve(t, b)
	ctx := t.Context()
	grades := map[string]string{"p": "passed", "f": "failed", "e": "boom", "g": "failed"}
	submitSuite(t, b, "r", 1, grades, "p", "f", "e", "g")
	endAll(t, b, "r")
	before, err := client.Lookup(b.insp, b.pool.Name(), "r/e")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		statuses []string
		want     client.Retried
		retried  []string
	}{
		{[]string{run.Errored}, client.Retried{Errored: 1}, []string{"e"}},
		{nil, client.Retried{Errored: 1, Failed: 2}, []string{"f", "e", "g"}},
		{[]string{run.Failed}, client.Retried{Failed: 2}, []string{"f", "g"}},
	}
	for _, tt := range tests {
		got, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "r", client.RetryOptions{Statuses: tt.statuses})
		if err != nil || got != tt.want {
			t.Fatalf("retry %v: %+v, %v; want %+v", tt.statuses, got, err, tt.want)
		}
		c, err := b.runs.Progress(ctx, "r")
		if err != nil || c.Done() != 4-len(tt.retried) {
			t.Fatalf("retry %v: progress %+v, %v", tt.statuses, c, err)
		}
		for _, key := range tt.retried {
			if _, ok, _ := b.runs.Record(ctx, "r", key); ok {
				t.Errorf("retry %v: eval %s still ended in the run", tt.statuses, key)
			}
		}
		endAll(t, b, "r")
		if c, _ := b.runs.Progress(ctx, "r"); c.Passed != 1 || c.Failed != 2 || c.Errored != 1 {
			t.Fatalf("retry %v, ended again: %+v", tt.statuses, c)
		}
	}
	after, err := client.Lookup(b.insp, b.pool.Name(), "r/e")
	if err != nil {
		t.Fatal(err)
	}
	e, err := tasks.ParseEval(after.Payload)
	if err != nil || e.ID != "r/e" || e.Run != "r" || e.Key != "e" || after.MaxRetry != before.MaxRetry || after.Timeout != before.Timeout || after.Retention != before.Retention {
		t.Errorf("retried task %+v (%+v, %v); want NAME/KEY again, with the run's retries, timeout and retention (%+v)", after, e, err, before)
	}
	if _, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "r", client.RetryOptions{Statuses: []string{run.Passed}}); !errors.Is(err, run.ErrInvalid) {
		t.Errorf("retry passed: %v, want ErrInvalid", err)
	}
	if _, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "nosuch", client.RetryOptions{}); !errors.Is(err, run.ErrNotFound) {
		t.Errorf("unknown run: %v, want ErrNotFound", err)
	}
}

// TestRetryRunTaskGone: an eval whose task is gone is refused, counted,
// with nothing changed; the run's suite gives its spec back, epochs
// included.
func TestRetryRunTaskGone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	serve(t, b)
	ctx := t.Context()
	grades := map[string]string{"x": "failed", "y": "passed"}
	suite := submitSuite(t, b, "ep", 2, grades, "x", "y")
	endAll(t, b, "ep")
	queue := tasks.Queues(b.pool.Name()).Evals
	for _, id := range []string{"ep/x#1", "ep/x#2"} {
		if err := b.insp.DeleteTask(queue, id); err != nil {
			t.Fatal(err)
		}
	}
	_, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "ep", client.RetryOptions{})
	if !errors.Is(err, client.ErrTaskGone) || !strings.Contains(err.Error(), " 2 of its evals") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("tasks gone: %v, want ErrTaskGone naming 2 evals on one line", err)
	}
	if c, _ := b.runs.Progress(ctx, "ep"); c.Failed != 2 || c.Passed != 2 {
		t.Fatalf("refused retry changed the run: %+v", c)
	}
	// A suite that puts an eval in another group is not the run's.
	other := slices.Clone(suite)
	other[0].Group = "other"
	if _, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "ep", client.RetryOptions{Suite: other}); !errors.Is(err, tasks.ErrBadPayload) || !strings.Contains(err.Error(), `the suite puts it in group "other", the run has it in ""`) {
		t.Fatalf("retry with another suite: %v; want ErrBadPayload naming the groups", err)
	}
	if c, _ := b.runs.Progress(ctx, "ep"); c.Failed != 2 || c.Passed != 2 {
		t.Fatalf("a retry refused for its suite changed the run: %+v", c)
	}
	got, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "ep", client.RetryOptions{Suite: suite})
	if err != nil || got != (client.Retried{Failed: 2}) {
		t.Fatalf("retry with the suite: %+v, %v", got, err)
	}
	for epoch, key := range []string{"x#1", "x#2"} {
		info, err := client.Lookup(b.insp, b.pool.Name(), "ep/"+key)
		if err != nil {
			t.Fatal(err)
		}
		e, err := tasks.ParseEval(info.Payload)
		if err != nil || e.ID != "ep/"+key || e.Run != "ep" || e.Key != key || e.Epoch != epoch+1 || string(e.Spec) != `{"grade":"failed"}` {
			t.Errorf("eval %s enqueued from the suite as %+v, %v", key, e, err)
		}
	}
	endAll(t, b, "ep")
	if c, _ := b.runs.Progress(ctx, "ep"); c.Failed != 2 || c.Passed != 2 {
		t.Fatalf("retried from the suite, ended again: %+v", c)
	}
}

// failEnqueues fails every script call of its client after the first n:
// Asynq enqueues by script.
type failEnqueues struct{ n atomic.Int64 }

func (h *failEnqueues) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *failEnqueues) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); (name == "evalsha" || name == "eval") && h.n.Add(-1) < 0 {
			return errors.New("enqueue refused (test)")
		}
		return next(ctx, cmd)
	}
}
func (h *failEnqueues) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestRetryRunEnqueueLost: an enqueue that fails midway leaves the evals
// retried admitted in their run, not lost: the reap's Readmit enqueues
// them, once each, and they run.
func TestRetryRunEnqueueLost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	serve(t, b)
	ctx := t.Context()
	grades := map[string]string{"a": "boom", "b": "boom", "c": "boom"}
	submitSuite(t, b, "rs", 1, grades, "a", "b", "c")
	endAll(t, b, "rs")
	_, recs, _, err := b.runs.Records(ctx, "rs")
	if err != nil {
		t.Fatal(err)
	}
	hook := &failEnqueues{}
	hook.n.Store(1)
	rdb := redis.NewClient(&redis.Options{Addr: b.rdb.Options().Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(hook)
	got, err := client.RetryRun(ctx, asynq.NewClientFromRedisClient(rdb), b.insp, b.pool, b.runs, "rs", client.RetryOptions{})
	if err == nil || got != (client.Retried{Errored: 3}) || !strings.Contains(err.Error(), "wait for a worker to admit them") {
		t.Fatalf("retry cut short: %+v, %v", got, err)
	}
	if c, _ := b.runs.Progress(ctx, "rs"); c.Done() != 0 || len(recs) != 3 {
		t.Fatalf("after the retry: %+v; want its 3 evals open", c)
	}
	if n, err := client.Readmit(ctx, b.aq, b.insp, b.pool, b.runs); err != nil || n == 0 {
		t.Fatalf("Readmit = %d, %v; want the evals admitted but not enqueued enqueued", n, err)
	}
	if n, err := client.Readmit(ctx, b.aq, b.insp, b.pool, b.runs); err != nil || n != 0 {
		t.Fatalf("Readmit again = %d, %v; want none: each is enqueued once", n, err)
	}
	endAll(t, b, "rs")
	if c, _ := b.runs.Progress(ctx, "rs"); c.Errored != 3 || c.Done() != 3 {
		t.Errorf("after the enqueued one ended: %+v", c)
	}
}

// Two retries of one run at once never delete the tasks the other
// enqueued: the second is refused (run.ErrRetrying) while the first holds
// the run, and every eval runs again and ends, none left pending without
// a task.
func TestConcurrentRetriesLeaveNoEvalPending(t *testing.T) {
	t.Parallel()
	b := setup(t)
	serve(t, b)
	ctx := t.Context()
	grades, keys := map[string]string{}, []string{}
	for i := range 300 {
		key := fmt.Sprint("k", i)
		grades[key], keys = "failed", append(keys, key)
	}
	submitSuite(t, b, "twice", 1, grades, keys...)
	endAll(t, b, "twice")
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "twice", client.RetryOptions{})
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, run.ErrRetrying) {
			t.Errorf("a retry: %v; want none, or ErrRetrying", err)
		}
	}
	endAll(t, b, "twice")
	if c, err := b.runs.Progress(ctx, "twice"); err != nil || c.Failed != 300 {
		t.Fatalf("after two retries at once: %+v, %v; want all 300 ended again", c, err)
	}
	unlock, err := b.runs.LockRetry(ctx, "twice")
	if err != nil {
		t.Fatalf("the run's retry lock was not given back: %v", err)
	}
	if _, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "twice", client.RetryOptions{}); !errors.Is(err, run.ErrRetrying) || strings.Count(err.Error(), "\n") > 0 {
		t.Errorf("a retry while another holds the run: %v; want one line of ErrRetrying", err)
	}
	unlock()
}

// TestRetryWaitsForAnEndingTask: a worker records an eval's end in its run
// before Asynq completes the task, so a retry can come between the two;
// it waits for the task to end instead of refusing the run, and gives up
// with the caller's context.
func TestRetryWaitsForAnEndingTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	serve(t, b)
	ctx := t.Context()
	req := client.RunRequest{Name: "ending", Evals: []tasks.Eval{{ID: "k", Spec: json.RawMessage(`{"hold":true}`)}}}
	if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, b.runs, req); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "eval ending/k running", func() bool {
		if _, err := client.Admit(ctx, b.aq, b.insp, b.pool, b.runs); err != nil {
			t.Fatal(err)
		}
		return state(t, b, "ending/k") == asynq.TaskStateActive
	})
	if _, err := b.runs.Finish(ctx, "ending", run.Record{Key: "k", Status: run.Errored, Error: "boom", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := client.RetryRun(short, b.aq, b.insp, b.pool, b.runs, "ending", client.RetryOptions{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("retry while the task ends: %v; want it to wait for the task until its context ends", err)
	}
	if c, _ := b.runs.Progress(ctx, "ending"); c.Errored != 1 {
		t.Fatalf("a retry given up changed the run: %+v", c)
	}
	done := make(chan error, 1)
	go func() {
		got, err := client.RetryRun(ctx, b.aq, b.insp, b.pool, b.runs, "ending", client.RetryOptions{})
		if err == nil && got != (client.Retried{Errored: 1}) {
			err = fmt.Errorf("retried %+v", got)
		}
		done <- err
	}()
	close(b.release)
	if err := <-done; err != nil {
		t.Fatalf("retry once the task ended: %v; want its eval retried", err)
	}
	if c, _ := b.runs.Progress(ctx, "ending"); c.Done() != 0 {
		t.Fatalf("after the retry: %+v; want its eval open again", c)
	}
}
