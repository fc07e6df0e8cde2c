package evalpool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// fairBundle is a pool of 8 executors whose calls take 50 ms, behind
// runCalls, and a worker for it.
type fairBundle struct {
	c     *evalpool.Client
	pool  string
	calls *evaltest.RunCalls
}

func fairSetup(t *testing.T) *fairBundle {
	t.Helper()
	rdb := evaltest.Client(t)
	b := &fairBundle{pool: evaltest.Pool(t, rdb)}
	var err error
	if b.c, err = evalpool.NewClient(rdb, evalpool.ClientConfig{}); err != nil {
		t.Fatal(err)
	}
	fleet, err := refexec.NewFleet(8, refexec.Options{Latency: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b.calls = evaltest.NewRunCalls(fleet)
	srv := httptest.NewServer(b.calls)
	t.Cleanup(srv.Close)
	p, err := b.c.Pool(b.pool)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if _, err := p.Register(t.Context(), pool.Executor{URL: srv.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := evalpool.NewWorker(rdb, evalpool.WorkerConfig{Pools: []string{b.pool}, Config: worker.Config{
		Concurrency: 16, Cleanup: worker.CleanupInline, PollInterval: 20 * time.Millisecond, NoExecutorDelay: 20 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	evaltest.Run(t, "worker", w.Run)
	return b
}

// submit submits run name of n evals, and returns when it was submitted.
func (b *fairBundle) submit(t *testing.T, name string, n int, req client.RunRequest) time.Time {
	t.Helper()
	req.Name = name
	for i := range n {
		req.Evals = append(req.Evals, tasks.Eval{ID: fmt.Sprint(i), Spec: json.RawMessage(`{}`)})
	}
	at := time.Now()
	if _, err := b.c.SubmitRun(t.Context(), b.pool, req); err != nil {
		t.Fatal(err)
	}
	return at
}

// waitRun waits for every eval of run name to end, and returns when the
// last did.
func (b *fairBundle) waitRun(t *testing.T, name string, within time.Duration) time.Time {
	t.Helper()
	evaltest.Eventually(t, within, "run "+name+" ended", func() bool {
		c, err := b.c.Runs().Progress(t.Context(), name)
		return err == nil && c.Pending == 0 && c.Running == 0
	})
	return time.Now()
}

// share is the part of the executors' time that run a had against run
// other ("": the evals of no run), measured at the executors over 4 s: a
// window measured, not an event waited for.
func (b *fairBundle) share(t *testing.T, a, other string) float64 {
	t.Helper()
	from := time.Now()
	time.Sleep(4 * time.Second)
	to := time.Now()
	x, y := b.calls.Busy(a, from, to), b.calls.Busy(other, from, to)
	share := float64(x) / float64(x+y)
	t.Logf("executor time: %q %s, %q %s: %.0f/%.0f", a, x.Round(time.Millisecond), other, y.Round(time.Millisecond), 100*share, 100*(1-share))
	return share
}

// cancel ends run name, so that the test does not wait for it.
func (b *fairBundle) cancel(t *testing.T, name string) {
	t.Helper()
	if _, err := b.c.CancelRun(context.WithoutCancel(t.Context()), name); err != nil {
		t.Fatal(err)
	}
}

// A 10-eval run submitted behind a 5,000-eval one ends within 3× its time
// alone, with no flag: first come, first served would keep it waiting for
// the whole backlog (about 30 s here).
func TestASmallRunIsNotStuckBehindABigOne(t *testing.T) {
	t.Parallel()
	b := fairSetup(t)
	start := b.submit(t, "alone", 10, client.RunRequest{})
	alone := b.waitRun(t, "alone", 30*time.Second).Sub(start)

	b.submit(t, "big", 5000, client.RunRequest{})
	defer b.cancel(t, "big")
	evaltest.Eventually(t, 10*time.Second, "the big run running", func() bool {
		c, err := b.c.Runs().Progress(t.Context(), "big")
		return err == nil && c.Done() >= 16
	})
	start = b.submit(t, "small", 10, client.RunRequest{})
	behind := b.waitRun(t, "small", 60*time.Second).Sub(start)
	t.Logf("a 10-eval run: %s alone, %s behind a 5,000-eval run", alone.Round(time.Millisecond), behind.Round(time.Millisecond))
	if limit := 3 * max(alone, 500*time.Millisecond); behind > limit {
		t.Errorf("behind the big run it took %s, more than %s (3× its time alone)", behind, limit)
	}
}

// Two backlogged runs of weights 3 and 1 split the executors' time 75/25,
// give or take 10 points.
func TestWeightsSplitThePool(t *testing.T) {
	t.Parallel()
	b := fairSetup(t)
	b.submit(t, "three", 2000, client.RunRequest{Weight: 3})
	defer b.cancel(t, "three")
	b.submit(t, "one", 2000, client.RunRequest{Weight: 1})
	defer b.cancel(t, "one")
	// The rule has settled once the light run holds its share, 2 of the 8
	// executors, at once.
	evaltest.Eventually(t, 10*time.Second, "the weight 1 run holding its share", func() bool { return b.calls.Peak("one") >= 2 })
	if share := b.share(t, "three", "one"); share < 0.65 || share > 0.85 {
		t.Errorf("weight 3 had %.0f%% of the executors' time, want 75 ± 10", 100*share)
	}
	// The runs' own figures agree: both held executors, the heavier more.
	held := map[string]float64{}
	for _, name := range []string{"three", "one"} {
		sh, err := b.c.Runs().Share(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		held[name] = sh.HeldLastMinute
	}
	t.Logf("executors held over the last minute, by the runs' records: %v", held)
	if held["one"] <= 0 || held["three"] <= held["one"] {
		t.Errorf("executors held over the last minute: %v; want both some, weight 3 more", held)
	}
}

// A run capped at 2 executors never has more than 2 calls at the
// executors at once, however free the pool; a high priority run submitted
// behind a backlogged normal one ends as if alone.
func TestCapAndPriority(t *testing.T) {
	t.Parallel()
	b := fairSetup(t)
	start := b.submit(t, "capped", 40, client.RunRequest{MaxExecutors: 2})
	b.waitRun(t, "capped", 30*time.Second)
	if peak := b.calls.Peak("capped"); peak > 2 || peak == 0 {
		t.Errorf("the executors saw %d calls of a run capped at 2 at once", peak)
	}
	t.Logf("40 evals capped at 2 executors: %s", time.Since(start).Round(time.Millisecond))

	b.submit(t, "normal", 2000, client.RunRequest{})
	defer b.cancel(t, "normal")
	evaltest.Eventually(t, 10*time.Second, "the normal run running", func() bool {
		c, err := b.c.Runs().Progress(t.Context(), "normal")
		return err == nil && c.Done() >= 16
	})
	start = b.submit(t, "urgent", 40, client.RunRequest{Priority: run.PriorityHigh})
	took := b.waitRun(t, "urgent", 30*time.Second).Sub(start)
	from := start.Add(took / 4) // what the normal run had in flight ended
	urgent, normal := b.calls.Busy("urgent", from, start.Add(took)), b.calls.Busy("normal", from, start.Add(took))
	t.Logf("a high priority run of 40 behind a normal one of 2,000: %s; executor time then: %s urgent, %s normal", took.Round(time.Millisecond), urgent.Round(time.Millisecond), normal.Round(time.Millisecond))
	if urgent < 3*normal {
		t.Errorf("while the high priority run ran, it had %s of the executors' time and the normal one %s: want it served first", urgent, normal)
	}
}

// A cancelled run leaves nothing to admit: a run submitted after a
// cancelled high priority backlog runs at once, not one eval per
// starvation guard behind the backlog's cancelled evals.
func TestACancelledRunLeavesNothingToAdmit(t *testing.T) {
	t.Parallel()
	b := fairSetup(t)
	b.submit(t, "backlog", 5000, client.RunRequest{Priority: run.PriorityHigh})
	b.cancel(t, "backlog")
	start := b.submit(t, "after", 10, client.RunRequest{})
	took := b.waitRun(t, "after", 30*time.Second).Sub(start)
	if sh, err := b.c.Runs().Share(t.Context(), "backlog"); err != nil || sh.Queued != 0 || sh.InFlight != 0 {
		t.Errorf("the cancelled run's share: %+v, %v; want nothing queued or in flight", sh, err)
	}
	t.Logf("10 evals after a cancelled high priority run of 5,000: %s", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("10 evals after a cancelled run took %s", took)
	}
}

// More open runs than one admission looks at (MaxActiveRuns) all run: a
// run whose evals ended leaves the admissible runs at once.
func TestManyRunsAllRun(t *testing.T) {
	t.Parallel()
	b := fairSetup(t)
	start := time.Now()
	n := run.MaxActiveRuns + 50
	for i := range n {
		b.submit(t, fmt.Sprintf("many-%03d", i), 2, client.RunRequest{})
	}
	for i := range n {
		b.waitRun(t, fmt.Sprintf("many-%03d", i), 60*time.Second)
	}
	t.Logf("%d runs of 2 evals on 8 executors: %s", n, time.Since(start).Round(time.Millisecond))
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("%d runs of 2 evals took %s", n, took)
	}
}

// Evals of no run share the pool as one more run of weight 1: a run
// submitted behind 2,000 of them is not stuck behind them, and a run's
// backlog and theirs split the executors' time 50/50.
func TestEvalsOfNoRunShareAsOneRun(t *testing.T) {
	t.Parallel()
	b := fairSetup(t)
	start := b.submit(t, "nr-alone", 10, client.RunRequest{})
	alone := b.waitRun(t, "nr-alone", 30*time.Second).Sub(start)

	var evals []tasks.Eval
	for i := range 2000 {
		evals = append(evals, tasks.Eval{ID: fmt.Sprint("solo-", i), Spec: json.RawMessage(`{}`)})
	}
	if _, err := b.c.Enqueue(t.Context(), b.pool, evals, evalpool.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := b.c.Inspector().DeleteAllScheduledTasks(tasks.Queues(b.pool).Evals); err != nil {
			t.Error(err)
		}
	})
	evaltest.Eventually(t, 10*time.Second, "the evals of no run running", func() bool { return b.calls.Peak("") >= 8 })
	start = b.submit(t, "nr-small", 10, client.RunRequest{})
	behind := b.waitRun(t, "nr-small", 60*time.Second).Sub(start)
	t.Logf("a 10-eval run: %s alone, %s behind 2,000 evals of no run", alone.Round(time.Millisecond), behind.Round(time.Millisecond))
	if limit := 3 * max(alone, 500*time.Millisecond); behind > limit {
		t.Errorf("behind the evals of no run it took %s, more than %s (3× its time alone)", behind, limit)
	}

	b.submit(t, "nr-big", 2000, client.RunRequest{})
	defer b.cancel(t, "nr-big")
	evaltest.Eventually(t, 10*time.Second, "the run holding its share", func() bool { return b.calls.Peak("nr-big") >= 4 })
	if share := b.share(t, "nr-big", ""); share < 0.4 || share > 0.6 {
		t.Errorf("the run had %.0f%% of the executors' time beside the evals of no run, want 50 ± 10", 100*share)
	}
}

// Evals of no run are dated by Redis's clock, not their producer's: with
// the machine's clock an hour off Redis's (stepped here on Redis's side),
// a held eval is due HeldFor after Redis's now, so that held evals of
// producers whose clocks differ are admitted in the order they came, and
// none looks starving, or young, for its producer's clock.
func TestEvalsOfNoRunAreDatedByRedis(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{SteppableClock: true})
	rdb := srv.Client(t)
	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.StepClock(-time.Hour); err != nil {
		t.Fatal(err)
	}
	redisNow, err := rdb.Time(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	// An empty pool admits two (twice max(0, 1) executors): the third is
	// held.
	var evals []tasks.Eval
	for i := range 3 {
		evals = append(evals, tasks.Eval{ID: fmt.Sprint("dated-", i), Spec: json.RawMessage(`{}`)})
	}
	if _, err := c.Enqueue(t.Context(), "dated", evals, evalpool.EnqueueOptions{AllowEmptyPool: true}); err != nil {
		t.Fatal(err)
	}
	info, err := c.Inspector().GetTaskInfo(tasks.Queues("dated").Evals, "dated-2")
	if err != nil {
		t.Fatal(err)
	}
	if due := info.NextProcessAt.Sub(redisNow.Add(run.HeldFor)); due < -2*time.Second || due > 2*time.Second {
		t.Errorf("a held eval is due %s off Redis's now + HeldFor (Redis's clock is an hour behind the machine's): dated by its producer's clock", due.Round(time.Second))
	}
}
