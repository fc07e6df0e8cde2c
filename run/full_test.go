package run_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
)

// TestRunAtMaxmemory fills a real Redis to its maxmemory (noeviction): a
// run's reads still answer, the ends that cannot be written are refused
// with ErrRedisFull, a run that cannot be created leaves its name free, and
// once memory is freed Reconcile records the ends that were missed.
func TestRunAtMaxmemory(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: evaltest.FullRedisArgs})
	client := srv.Client(t)
	s := run.NewStore(client, run.Options{})
	ctx := t.Context()
	if err := s.Create(ctx, run.Run{Name: "r", Pool: "p", CreatedAt: time.Now(), Keys: []string{"a", "b", "c", "d"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Submitted(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"a", "b"} {
		if err := s.Started(ctx, "r", key, "http://e:1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Finish(ctx, "r", run.Record{Key: "c", Status: run.Passed}); err != nil {
		t.Fatal(err)
	}
	free := evaltest.FillRedis(t, client)

	if _, err := s.Get(ctx, "r"); err != nil {
		t.Errorf("get: %v", err)
	}
	if _, rows, err := s.Results(ctx, "r"); err != nil || len(rows) != 4 || rows[0].Status != run.Running {
		t.Errorf("results: %v, %v", rows, err)
	}
	if sum, err := s.Summarize(ctx, "r", ""); err != nil || sum.Passed != 1 || sum.Running != 2 {
		t.Errorf("summary: %+v, %v", sum, err)
	}
	if c, err := s.Progress(ctx, "r"); err != nil || c.Passed != 1 || c.Running != 2 || c.Pending != 1 {
		t.Errorf("progress: %+v, %v", c, err)
	}
	if runs, err := s.List(ctx, 10); err != nil || len(runs) != 1 {
		t.Errorf("list: %v, %v", runs, err)
	}
	if _, err := s.Finish(ctx, "r", run.Record{Key: "a", Status: run.Passed}); !errors.Is(err, run.ErrRedisFull) {
		t.Errorf("finish: %v, want ErrRedisFull", err)
	}
	if err := s.Create(ctx, run.Run{Name: "r2", Pool: "p", CreatedAt: time.Now(), Keys: []string{"a"}}); !errors.Is(err, run.ErrRedisFull) {
		t.Errorf("create: %v, want ErrRedisFull", err)
	}

	free()
	if err := s.Create(ctx, run.Run{Name: "r2", Pool: "p", CreatedAt: time.Now(), Keys: []string{"a"}}); err != nil {
		t.Errorf("create after memory was freed: %v (the failed create must give the name back)", err)
	}
	// What Asynq says of each eval: a completed, b archived, d still queued.
	asynq := map[string]run.Record{"r/a": {Status: run.Passed}, "r/b": {Status: run.Errored, Error: "boom"}}
	lookup := func(_ context.Context, id string) (run.Record, bool, error) {
		rec, ok := asynq[id]
		return rec, ok, nil
	}
	got, err := s.Reconcile(ctx, "p", lookup, run.ReconcileOptions{Every: time.Millisecond})
	if err != nil || got.Recorded != 2 || got.Closed != 0 {
		t.Fatalf("reconcile: %+v, %v; want 2 recorded, the run still open", got, err)
	}
	if c, _ := s.Progress(ctx, "r"); c.Passed != 2 || c.Errored != 1 || c.Running != 0 || c.Pending != 1 {
		t.Errorf("progress after reconcile: %+v", c)
	}
	asynq["r/d"] = run.Record{Status: run.Failed}
	evaltest.Eventually(t, 5*time.Second, "the run never closed", func() bool {
		got, err := s.Reconcile(ctx, "p", lookup, run.ReconcileOptions{Every: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return got.Closed == 1
	})
	if c, _ := s.Progress(ctx, "r"); c.Done() != 4 {
		t.Errorf("progress after the last reconcile: %+v", c)
	}
}

// TestReconcileIsBounded: one call looks at no more runs, and no more evals
// of a run, than its options allow, and never at a run whose ends are all
// recorded.
func TestReconcileIsBounded(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	s := run.NewStore(client, run.Options{})
	poolName := evaltest.Pool(t, client)
	keys := []string{"1", "2", "3", "4", "5", "6"}
	for i := range 3 {
		name := evaltest.Pool(t, client) + "-" + string(rune('a'+i))
		if err := s.Create(t.Context(), run.Run{Name: name, Pool: poolName, CreatedAt: time.Now(), Keys: keys}); err != nil {
			t.Fatal(err)
		}
		if err := s.Submitted(t.Context(), name); err != nil {
			t.Fatal(err)
		}
	}
	looked := 0
	ended := func(context.Context, string) (run.Record, bool, error) {
		looked++
		return run.Record{Status: run.Passed}, true, nil
	}
	got, err := s.Reconcile(t.Context(), poolName, ended, run.ReconcileOptions{Runs: 2, Window: 4, Every: time.Hour})
	if err != nil || got.Runs != 2 || looked != 8 || got.Recorded != 8 {
		t.Fatalf("first call: %+v, %d looked, %v; want 2 runs, 8 evals", got, looked, err)
	}
	// The third run is due; the first two wait an hour.
	looked = 0
	got, err = s.Reconcile(t.Context(), poolName, ended, run.ReconcileOptions{Runs: 2, Window: 4, Every: time.Hour})
	if err != nil || got.Runs != 1 || looked != 4 {
		t.Fatalf("second call: %+v, %d looked, %v; want the third run alone", got, looked, err)
	}
}
