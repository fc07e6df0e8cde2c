package worker

import (
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// A step of the Redis host's wall clock (here +8 s, while four 4 s evals
// run on 3 s leases) reclaims no live lease: the ticking workers let the
// pool take the step out of its time. Without that, every executor would be
// handed out a second time, each newcomer refused as busy by the
// lease-aware executor, and each holder would lose its lease at its next
// renewal (these evals have no retries: they would be archived).
func TestRedisClockStepReclaimsNoLiveLease(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{SteppableClock: true})
	client := srv.Client(t)
	exec := refexec.Options{Latency: 4 * time.Second}
	w, b := setupOn(t, client, Config{LeaseTTL: 3 * time.Second, Concurrency: 4}, exec, exec, exec, exec)
	start(t, w)
	ids := enqueueEvals(t, b, 4, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "the evals never all ran", func() bool {
		for _, e := range b.executors {
			if !e.Stats().Running {
				return false
			}
		}
		return true
	})
	if err := srv.StepClock(8 * time.Second); err != nil {
		t.Fatal(err)
	}
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(ids), 30*time.Second); completed != len(ids) {
		t.Fatalf("%d of %d evals completed after the step\n%s", completed, len(ids), b.logs)
	}
	for i, e := range b.executors {
		if st := e.Stats(); st.Busy != 0 || st.Overlaps != 0 || st.Served != 1 {
			t.Errorf("executor %s: %+v; want its one eval served, and nobody else sent to it meanwhile", b.urls[i], st)
		}
	}
	if n := b.logs.Count("the pool handed it out twice"); n != 0 {
		t.Errorf("%d errors say the pool handed an executor out twice", n)
	}
	evaltest.Eventually(t, 5*time.Second, "the step was never reported", func() bool {
		return testutil.ToFloat64(b.metrics.clockSteps.WithLabelValues(b.pool.Name())) == 1 && b.logs.Count("Redis's clock stepped") == 1
	})
	assertPoolWhole(t, b)
}

// Redis restarted from a snapshot older than what the worker saw: the
// worker's next tick finds the pool's generation below the one it last saw,
// says so at error level and counts it.
func TestRedisRewindIsNoticed(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := srv.Client(t)
	w, b := setupOn(t, client, Config{}, refexec.Options{})
	start(t, w)
	clock := keys.ForPool(b.pool.Name()).Clock()
	gen := func() int64 {
		n, _ := client.HGet(t.Context(), clock, "gen").Int64()
		return n
	}
	evaltest.Eventually(t, 10*time.Second, "the worker never ticked", func() bool { return gen() > 0 })
	if err := client.Save(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	saved := gen()
	// More than two ticks lost: a rewind, not a failover a little behind.
	evaltest.Eventually(t, 10*time.Second, "the worker stopped ticking", func() bool { return gen() >= saved+4 })
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "the rewind was never noticed", func() bool {
		return testutil.ToFloat64(b.metrics.rewinds.WithLabelValues(b.pool.Name())) == 1
	})
	if n := b.logs.Count(`"level":"error","pool":"default","generations_lost"`); n != 1 {
		t.Errorf("%d error lines about the rewind, want 1:\n%s", n, b.logs)
	}
	vs, err := b.pool.Check(t.Context())
	if err != nil || len(vs) != 1 || vs[0].Invariant != 9 {
		t.Errorf("Check after the rewind = %v, %v; want invariant 9 alone", vs, err)
	}
	// The fences go on above those the executor saw: an eval after the
	// rewind runs on its first attempt.
	b.aq = asynq.NewClientFromRedisClient(client) // one that publishes the queue the rewind took
	after := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(after), 30*time.Second); completed != 1 {
		info, _ := b.insp.GetTaskInfo(tasks.QueueEvals, after[0])
		t.Fatalf("the eval after the rewind did not complete: %+v", info)
	}
}

// A Redis clock that steps forward again and again (+2 s every 100 ms, for
// 5 s) under three ticking workers never runs the pool's time faster than
// theirs: every tick measures Redis's clock against the worker's own, so
// no live lease is lost or handed out again.
func TestRedisClockStormReclaimsNoLiveLease(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{SteppableClock: true})
	client := srv.Client(t)
	// The lease (6 s) is far shorter than the storm's 100 s, yet long
	// enough that renewals a loaded machine delays by a second or two keep
	// it: what is under test is the storm, not the scheduler.
	exec := refexec.Options{Latency: 8 * time.Second}
	cfg := Config{LeaseTTL: 6 * time.Second, Concurrency: 2}
	w, b := setupOn(t, client, cfg, exec, exec, exec, exec)
	start(t, w)
	// Three workers whose ticks fall apart: each promise is then the
	// others' to break.
	gen := func() int64 {
		n, _ := client.HGet(t.Context(), keys.ForPool(b.pool.Name()).Clock(), "gen").Int64()
		return n
	}
	for range 2 {
		g := gen()
		evaltest.Eventually(t, 5*time.Second, "the workers stopped ticking", func() bool { return gen() > g })
		more, _ := setupOn(t, client, cfg)
		start(t, more)
	}
	ids := enqueueEvals(t, b, 4, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "the evals never all ran", func() bool {
		for _, e := range b.executors {
			if !e.Stats().Running {
				return false
			}
		}
		return true
	})
	clock := keys.ForPool(b.pool.Name()).Clock()
	poolTime := func() time.Duration { // the last tick's
		us, _ := client.HGet(t.Context(), clock, "last").Int64()
		return time.Duration(us) * time.Microsecond
	}
	// Measured from a tick just seen, not from one up to a tick interval
	// (or, on a loaded machine, longer) before the clock starts: the pool's
	// time from that tick on is what the workers' is compared with.
	g0 := gen()
	evaltest.Eventually(t, 5*time.Second, "the workers stopped ticking", func() bool { return gen() > g0 })
	before, began := poolTime(), time.Now()
	var step time.Duration
	for range 50 { // the storm's own cadence, not a wait
		step += 2 * time.Second
		if err := srv.StepClock(step); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	g := gen()
	evaltest.Eventually(t, 5*time.Second, "the workers stopped ticking", func() bool { return gen() > g })
	// A tick may run the pool's time ahead by its promise, no more.
	if ran, real := poolTime()-before, time.Since(began); ran > real+2*time.Second {
		t.Errorf("the pool's time ran %s while the workers' ran %s", ran, real)
	}
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(ids), 30*time.Second); completed != len(ids) {
		t.Fatalf("%d of %d evals completed through the storm\n%s", completed, len(ids), b.logs)
	}
	for i, e := range b.executors {
		if st := e.Stats(); st.Busy != 0 || st.Overlaps != 0 || st.Served != 1 {
			t.Errorf("executor %s: %+v; want its one eval served, and nobody else sent to it meanwhile", b.urls[i], st)
		}
	}
}
