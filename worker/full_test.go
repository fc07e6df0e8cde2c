package worker

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// TestEndsAtMaxmemoryAreRecordedLater fills a real Redis to its maxmemory
// while two evals of a run are on their executors: their ends cannot be
// written then, the executors still come back, the gauges show Redis full,
// and once memory is freed the worker records both ends.
func TestEndsAtMaxmemoryAreRecordedLater(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: evaltest.FullRedisArgs})
	rdb := srv.Client(t)
	slow := refexec.Options{Latency: 1500 * time.Millisecond}
	w, b := setupOn(t, rdb, Config{ReapInterval: time.Second, Cleanup: CleanupInline, ExecutorWait: -1}, slow, slow)
	start(t, w)
	runs := run.NewStore(rdb, run.Options{})
	ctx := t.Context()
	evals := []tasks.Eval{{ID: "a", Spec: json.RawMessage(`{"grade":"passed"}`)}, {ID: "b", Spec: json.RawMessage(`{"grade":"passed"}`)}}
	if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, runs, client.RunRequest{Name: "full", Evals: evals}); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "the evals never ran", func() bool {
		c, err := runs.Progress(ctx, "full")
		return err == nil && c.Running == 2
	})
	free := evaltest.FillRedis(t, rdb)
	evaltest.Eventually(t, 10*time.Second, "the ends were never kept to record later", func() bool {
		return testutil.ToFloat64(b.metrics.unrecorded) == 2
	})
	evaltest.Eventually(t, 10*time.Second, "the executors never came back", func() bool {
		c, err := b.pool.Counts(ctx)
		return err == nil && c.Available == 2
	})
	evaltest.Eventually(t, 5*time.Second, "the gauges never showed Redis full", func() bool {
		used, limit := testutil.ToFloat64(b.metrics.redisUsed), testutil.ToFloat64(b.metrics.redisMax)
		return limit > 0 && used >= limit
	})

	free()
	evaltest.Eventually(t, 10*time.Second, "the ends were never recorded", func() bool {
		c, err := runs.Progress(ctx, "full")
		return err == nil && c.Passed == 2 && c.Running == 0
	})
	// Recorded late by the worker that kept them, or by the reap's
	// reconciliation, whichever comes first; each counts its ends after
	// writing them.
	evaltest.Eventually(t, 5*time.Second, "the ends were not counted as recorded late or reconciled", func() bool {
		return testutil.ToFloat64(b.metrics.runEnds.WithLabelValues("recorded_late"))+testutil.ToFloat64(b.metrics.runEnds.WithLabelValues("reconciled")) == 2
	})
}

// TestReapReconcilesLostEnds runs evals of a run whose ends never reach the
// run, as when their worker is killed between an eval's end and its
// write: the reap's reconciliation records them from Asynq's state, with
// their groups from their payloads.
func TestReapReconcilesLostEnds(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	rdb := srv.Client(t)
	w, b := setupOn(t, rdb, Config{ReapInterval: time.Second}, refexec.Options{})
	runs := run.NewStore(rdb, run.Options{})
	ctx := t.Context()
	grades := map[string]string{"a": "passed", "b": "failed", "c": "junk"}
	if err := runs.Create(ctx, run.Run{Name: "lost", Pool: b.pool.Name(), CreatedAt: time.Now(), Keys: []string{"a", "b", "c"}}); err != nil {
		t.Fatal(err)
	}
	if err := runs.Submitted(ctx, "lost"); err != nil {
		t.Fatal(err)
	}
	for key, grade := range grades {
		// Without its run in the payload, the worker writes nothing to it
		// (and writes the result into the task). Producers refuse such a
		// payload (tasks.NewEval): it is put on the queue as any Asynq
		// client could.
		e := tasks.Eval{ID: run.EvalID("lost", key), Pool: b.pool.Name(), Spec: json.RawMessage(`{"grade":"` + grade + `"}`), TimeoutS: 60, Group: "g-" + key}
		if grade == "junk" { // times out, with no retry: archived
			e.Spec, e.TimeoutS = json.RawMessage(`{"sleep_ms":5000}`), 1
		}
		payload, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		task := asynq.NewTask(tasks.TypeEval, payload, asynq.Queue(tasks.Queues(b.pool.Name()).Evals), asynq.TaskID(e.ID),
			asynq.MaxRetry(tasks.NoExecutorReserve), asynq.Timeout(e.Timeout()+tasks.WaitAllowance), asynq.Retention(time.Hour))
		if _, err := b.aq.EnqueueContext(ctx, task); err != nil {
			t.Fatal(err)
		}
	}
	start(t, w)
	evaltest.Eventually(t, 20*time.Second, "the run never learned how its evals ended", func() bool {
		c, err := runs.Progress(ctx, "lost")
		return err == nil && c.Done() == 3
	})
	_, rows, err := runs.Results(ctx, "lost")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		want := map[string]string{"a": run.Passed, "b": run.Failed, "c": run.Errored}[r.Key]
		if r.Status != want || r.Group != "g-"+r.Key {
			t.Errorf("eval %s: %s in group %q, want %s in its payload's group", r.Key, r.Status, r.Group, want)
		}
	}
}

// TestAdmissionWaitsOutAFullRedis fills Redis while a run and evals of no
// run have evals waiting for admission behind those on the executors:
// admission is a write Redis refuses then, so they wait; once memory is
// freed, every one of them runs and ends, and no executor ever had two
// at once.
func TestAdmissionWaitsOutAFullRedis(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: evaltest.FullRedisArgs})
	rdb := srv.Client(t)
	slow := refexec.Options{Latency: time.Second}
	w, b := setupOn(t, rdb, Config{ReapInterval: time.Second, Cleanup: CleanupInline, ExecutorWait: -1}, slow, slow)
	start(t, w)
	runs := run.NewStore(rdb, run.Options{})
	ctx := t.Context()
	var evals []tasks.Eval
	for i := range 8 {
		evals = append(evals, tasks.Eval{ID: fmt.Sprint(i), Spec: json.RawMessage(`{"grade":"passed"}`)})
	}
	if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, runs, client.RunRequest{Name: "admit-full", Evals: evals}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"solo-1", "solo-2"} {
		task, err := tasks.NewEval(tasks.Eval{ID: id, Spec: json.RawMessage(`{"grade":"passed"}`)}, tasks.EvalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.aq.EnqueueContext(ctx, task, tasks.Hold(time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	evaltest.Eventually(t, 10*time.Second, "the run's first evals running", func() bool {
		c, err := runs.Progress(ctx, "admit-full")
		return err == nil && c.Running == 2
	})
	free := evaltest.FillRedis(t, rdb)
	full, err := runs.Share(ctx, "admit-full")
	if err != nil || full.Queued == 0 {
		t.Fatalf("the run's share once Redis is full: %+v, %v; want evals still waiting for admission", full, err)
	}
	// Both evals running end while Redis is full, and each one's admission
	// of the next is refused whole.
	evaltest.Eventually(t, 10*time.Second, "the ends kept to record later", func() bool {
		return testutil.ToFloat64(b.metrics.unrecorded) >= 2
	})
	if sh, err := runs.Share(ctx, "admit-full"); err != nil || sh.Queued != full.Queued || sh.InFlight != full.InFlight {
		t.Fatalf("the run's share after two evals ended while Redis is full: %+v, %v; want it as it was, %+v", sh, err, full)
	}
	free()
	evaltest.Eventually(t, 30*time.Second, "every eval ended", func() bool {
		c, err := runs.Progress(ctx, "admit-full")
		if err != nil || c.Passed != 8 {
			return false
		}
		for _, id := range []string{"solo-1", "solo-2"} {
			if info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id); err != nil || info.State != asynq.TaskStateCompleted {
				return false
			}
		}
		return true
	})
	for i, e := range b.executors {
		if st := e.Stats(); st.Overlaps != 0 {
			t.Errorf("executor %d: %+v; want no overlap", i, st)
		}
	}
}

// TestUngradedAttemptsInTheRunsShare runs a run whose attempts all error
// and are retried: an eval is noted running only while an attempt of it
// runs, so the run never shows more evals running than the pool has
// executors, and every attempt's time, the last one's too, counts in the
// executors it held over the last minute.
func TestUngradedAttemptsInTheRunsShare(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	rdb := srv.Client(t)
	failing := refexec.Options{Exec: "sleep 0.3; exit 1"}
	w, b := setupOn(t, rdb, Config{Cleanup: CleanupInline}, failing, failing)
	start(t, w)
	runs := run.NewStore(rdb, run.Options{})
	ctx := t.Context()
	var evals []tasks.Eval
	for i := range 4 {
		evals = append(evals, tasks.Eval{ID: fmt.Sprint(i), Spec: json.RawMessage(`{}`)})
	}
	if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, runs, client.RunRequest{Name: "flaky", Evals: evals, Options: tasks.EvalOptions{MaxRetry: 2}}); err != nil {
		t.Fatal(err)
	}
	peak := 0
	evaltest.Eventually(t, 30*time.Second, "every eval errored", func() bool {
		c, err := runs.Progress(ctx, "flaky")
		peak = max(peak, c.Running)
		return err == nil && c.Errored == 4
	})
	if peak > 2 {
		t.Errorf("the run showed %d evals running on a pool of 2 executors", peak)
	}
	// 12 attempts of at least 0.3 s each, over a window of 60 to 70 s, in
	// the hundredths the figure is given in.
	sh, err := runs.Share(ctx, "flaky")
	if want := math.Floor(3.6/70*100) / 100; err != nil || sh.HeldLastMinute < want {
		t.Errorf("executors held over the last minute: %v, %v; want at least %.2f, its 12 attempts' time", sh.HeldLastMinute, err, want)
	}
}
