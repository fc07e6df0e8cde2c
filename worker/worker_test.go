package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/lua"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

type testBundle struct {
	pool        *pool.Pool
	poolMetrics *pool.Metrics
	metrics     *Metrics
	logs        *evaltest.LogBuffer
	aq          *asynq.Client
	insp        *asynq.Inspector
	executors   []*refexec.Server
	urls        []string
}

// setup gives the test a Redis of its own (Asynq's queues are per Redis),
// a pool of simulated executors served over loopback HTTP, and a worker
// configured by cfg, not yet running.
func setup(t *testing.T, cfg Config, execs ...refexec.Options) (*Worker, *testBundle) {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	return setupOn(t, client, cfg, execs...)
}

// setupOn is setup on a given Redis: a server of the test's own, or a
// cluster.
func setupOn(t *testing.T, client redis.UniversalClient, cfg Config, execs ...refexec.Options) (*Worker, *testBundle) {
	t.Helper()
	logger, logs := evaltest.Logger()
	b := &testBundle{logs: logs, poolMetrics: pool.NewMetrics(), metrics: cmp.Or(cfg.Metrics, NewMetrics())}
	var err error
	// Executors that fail calls at random (FailRate) are not dead: no
	// quarantine for them, or the tests would measure it instead.
	quarantineAfter := 0
	for _, o := range execs {
		if o.FailRate > 0 {
			quarantineAfter = -1
		}
	}
	if b.pool, err = pool.New(client, pool.Options{Name: tasks.DefaultPool, Logger: logger, Metrics: b.poolMetrics}); err != nil {
		t.Fatal(err)
	}
	if err := b.pool.Configure(t.Context(), pool.Settings{LeaseGrace: 100 * time.Millisecond, QuarantineAfter: quarantineAfter}); err != nil {
		t.Fatal(err)
	}
	for _, o := range execs {
		s, err := refexec.New(o)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(s)
		t.Cleanup(ts.Close)
		b.executors, b.urls = append(b.executors, s), append(b.urls, ts.URL)
	}
	for _, u := range b.urls {
		if _, err := b.pool.Register(t.Context(), pool.Executor{URL: u}); err != nil {
			t.Fatal(err)
		}
	}
	b.aq = asynq.NewClientFromRedisClient(client)
	b.insp = asynq.NewInspectorFromRedisClient(client)
	cfg.Logger, cfg.Metrics = logger, b.metrics
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	if cfg.NoExecutorDelay == 0 {
		cfg.NoExecutorDelay = 20 * time.Millisecond
	}
	if cfg.RetryDelay == nil {
		cfg.RetryDelay = func(int) time.Duration { return 10 * time.Millisecond }
	}
	w, err := New(testParts(client, b.pool), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w, b
}

// testParts are a worker's parts on client, as evalpool.NewWorker makes
// them.
func testParts(client redis.UniversalClient, pools ...*pool.Pool) Parts {
	return Parts{Redis: client, Pools: pools, Asynq: asynq.NewClientFromRedisClient(client),
		Inspector: asynq.NewInspectorFromRedisClient(client), Runs: run.NewStore(client, run.Options{})}
}

// start runs the worker until the test ends.
func start(t *testing.T, w *Worker) {
	t.Helper()
	evaltest.Run(t, "worker", w.Run)
}

func enqueueEvals(t *testing.T, b *testBundle, n int, opts tasks.EvalOptions, timeout time.Duration) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("eval-%04d", i)
		task, err := tasks.NewEval(tasks.Eval{ID: ids[i], Spec: json.RawMessage(`{"n":1}`), TimeoutS: tasks.TimeoutSeconds(timeout)}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// assertPoolWhole fails unless Check is clean and every executor is
// available exactly once.
func assertPoolWhole(t *testing.T, b *testBundle) {
	t.Helper()
	assertPoolWholeBut(t, b)
}

// assertPoolWholeBut is assertPoolWhole for a pool where the executors
// named are quarantined (found unavailable), not available.
func assertPoolWholeBut(t *testing.T, b *testBundle, quarantined ...string) {
	t.Helper()
	if _, err := b.pool.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	vs, err := b.pool.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("violation: %s", v)
	}
	st, err := b.pool.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts[pool.StateAvailable] != len(b.urls)-len(quarantined) || st.Counts[pool.StateQuarantined] != len(quarantined) || len(st.Executors) != len(b.urls) {
		t.Fatalf("pool: %v of %d executors, want all available once but %d quarantined", st.Counts, len(b.urls), len(quarantined))
	}
	for _, e := range st.Executors {
		if slices.Contains(quarantined, e.URL) {
			if e.Quarantine == nil || e.Quarantine.Reason != pool.ReasonUnavailable {
				t.Errorf("%s: quarantine %+v, want one for being unavailable", e.URL, e.Quarantine)
			}
		} else if e.InAvailable != 1 {
			t.Errorf("%s is in the available set %d times", e.URL, e.InAvailable)
		}
	}
}

func assertNoOverlap(t *testing.T, b *testBundle) {
	t.Helper()
	for i, s := range b.executors {
		if st := s.Stats(); st.Overlaps != 0 {
			t.Errorf("executor %s saw %d overlapping evals: double booking", b.urls[i], st.Overlaps)
		}
	}
}

func releases(b *testBundle, outcome pool.ReleaseOutcome, path string) float64 {
	return b.poolMetrics.Releases(outcome, path)
}

// The talk's test_double_callback_resilience at worker level: both cleanup
// handlers run for one lease through a real Asynq server.
func TestBothCleanupsForOneLease(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{}, refexec.Options{})
	lease, err := b.pool.Acquire(t.Context(), "eval-1", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	c := tasks.Cleanup{EvalID: "eval-1", URL: lease.URL, Token: lease.Token, Fence: lease.Fence}
	for _, typ := range []string{tasks.TypeCleanupSuccess, tasks.TypeCleanupFailure} {
		c.Path = map[string]string{tasks.TypeCleanupSuccess: tasks.PathSuccess, tasks.TypeCleanupFailure: tasks.PathFailure}[typ]
		task, err := tasks.NewCleanup(typ, c)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second enqueue of the same cleanup is absorbed by its task ID
			if _, err := b.aq.EnqueueContext(t.Context(), task); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
				t.Fatal(err)
			}
		}
	}
	start(t, w)
	evaltest.Eventually(t, 10*time.Second, "cleanups never ran", func() bool {
		q, err := b.insp.GetQueueInfo(tasks.QueueCleanup)
		return err == nil && q.Completed == 2
	})
	released, absorbed := releases(b, pool.Released, ""), releases(b, pool.DuplicateRelease, "")
	if released != 1 || absorbed != 1 {
		t.Fatalf("released %v, duplicate %v; want 1 and 1", released, absorbed)
	}
	if n := b.logs.Count("double release detected"); n != 0 {
		t.Fatalf("%d double release warnings for the lease's designed second path, want 0", n)
	}
	assertPoolWhole(t, b)
}

// End to end in-process: three simulated executors failing 20% of evals,
// both cleanups for every eval.
func TestEvalsWithBothCleanups(t *testing.T) {
	t.Parallel()
	sim := refexec.Options{Latency: 2 * time.Millisecond, FailRate: 0.2}
	w, b := setup(t, Config{Cleanup: CleanupBoth, Concurrency: 6}, sim, sim, sim)
	start(t, w)
	ids := enqueueEvals(t, b, 60, tasks.EvalOptions{MaxRetry: 2}, time.Minute)
	completed, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), time.Minute)
	t.Logf("completed %d, archived %d", completed, archived)
	if completed == 0 {
		t.Fatal("no eval completed")
	}
	for _, id := range ids {
		info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id)
		if err != nil {
			t.Fatal(err)
		}
		switch info.State {
		case asynq.TaskStateCompleted:
			var r tasks.EvalResult
			if err := json.Unmarshal(info.Result, &r); err != nil || r.EvalID != id || r.Status != executor.StatusPassed {
				t.Errorf("eval %s result %s: %v", id, info.Result, err)
			}
		case asynq.TaskStateArchived:
			if !strings.Contains(info.LastErr, "simulated failure") {
				t.Errorf("eval %s archived with %q", id, info.LastErr)
			}
		default:
			t.Errorf("eval %s ended %s", id, info.State)
		}
	}
	// Both paths of every lease ran: the second is a known duplicate, and
	// a healthy run raises no double-release alert.
	if b.poolMetrics.Releases(pool.DuplicateRelease, "") == 0 {
		t.Fatal("no duplicate release: the cleanup paths were not both exercised")
	}
	if n := b.poolMetrics.DoubleReleases(""); n != 0 || b.logs.Count("double release detected") != 0 {
		t.Fatalf("%v double releases (%d warnings) in a healthy run: the designed second path must not raise the alert", n, b.logs.Count("double release detected"))
	}
	assertPoolWhole(t, b)
	assertNoOverlap(t, b)
}

// Junk put straight on the queues by a plain Asynq client is archived at
// once with a clear error; the worker goes on and the pool stays whole.
func TestJunkPayloadsAreArchivedAtOnce(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{}, refexec.Options{})
	start(t, w)
	junk := []struct{ typ, queue, payload string }{
		{tasks.TypeEval, tasks.QueueEvals, `not json`},
		{tasks.TypeEval, tasks.QueueEvals, `{"eval_id":"x"}`},
		{tasks.TypeEval, tasks.QueueEvals, `{"eval_id":"x","spec":{},"timeout_s":0}`},
		{tasks.TypeEval, tasks.QueueEvals, `{"eval_id":"x y","spec":{},"timeout_s":1}`},
		{tasks.TypeEval, tasks.QueueEvals, `{"eval_id":7,"spec":{},"timeout_s":1}`},
		{tasks.TypeEval, tasks.QueueEvals, `{"eval_id":"x","spec":{},"timeout_s":1,"lease_ttl_ms":-3}`},
		{tasks.TypeCleanupSuccess, tasks.QueueCleanup, `{"eval_id":"x","url":"http://e","path":"success"}`},
		{tasks.TypeCleanupFailure, tasks.QueueCleanup, `{"eval_id":"x","url":"http://e","token":"t","path":"sideways"}`},
		{tasks.TypeCleanupFailure, tasks.QueueCleanup, `[]`},
		{tasks.TypeReap, tasks.QueueMaintenance, `{"pool":1}`},
	}
	for i, j := range junk {
		task := asynq.NewTask(j.typ, []byte(j.payload), asynq.Queue(j.queue), asynq.MaxRetry(5), asynq.TaskID(fmt.Sprint("junk-", i)))
		if _, err := b.aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	for i, j := range junk {
		var info *asynq.TaskInfo
		evaltest.Eventually(t, 10*time.Second, "junk never archived: "+j.payload, func() bool {
			var err error
			info, err = b.insp.GetTaskInfo(j.queue, fmt.Sprint("junk-", i))
			return err == nil && info.State == asynq.TaskStateArchived
		})
		if info.Retried != 0 || !strings.Contains(info.LastErr, "bad payload") || strings.Contains(info.LastErr, "\n") {
			t.Errorf("%s %s: archived after %d retries with %q; want at once, one line naming the bad payload", j.typ, j.payload, info.Retried, info.LastErr)
		}
	}
	// The worker is still at work.
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(enqueueEvals(t, b, 3, tasks.EvalOptions{}, time.Minute))+6, 10*time.Second); completed != 3 {
		t.Fatalf("%d good evals completed after the junk, want 3", completed)
	}
	assertPoolWhole(t, b)
}

// Executors that answer junk fail their evals with one clear line each;
// every executor comes back, or is quarantined as unavailable (12 evals on
// 6 executors: never all of them, at 3 failures each), and none is
// double-booked.
func TestJunkExecutorAnswers(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{Concurrency: 6})
	answers := map[string]http.HandlerFunc{
		"not json":   func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>hello")) },
		"500":        func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "disk full", 500) },
		"bad status": func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"perhaps"}`)) },
		"huge body": func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"status":"passed","output":"`))
			_, _ = w.Write(make([]byte, executor.MaxAnswerBytes+10))
		},
		"closed connection": func(w http.ResponseWriter, _ *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.Close()
		},
		"slow drip": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			for r.Context().Err() == nil {
				_, _ = w.Write([]byte(" "))
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		},
	}
	wantErr := map[string]string{
		"not json": "bad answer", "500": "500 Internal Server Error: disk full", "bad status": `status "perhaps"`,
		"huge body": "longer than", "closed connection": "EOF", "slow drip": "deadline exceeded",
	}
	byURL := map[string]string{}
	for name, h := range answers {
		ts := httptest.NewServer(h)
		t.Cleanup(ts.Close)
		if _, err := b.pool.Register(t.Context(), pool.Executor{URL: ts.URL}); err != nil {
			t.Fatal(err)
		}
		b.urls = append(b.urls, ts.URL)
		byURL[ts.URL] = name
	}
	start(t, w)
	// The timeout ends the slow drip, and leaves a loaded machine the time
	// to read a huge body (1 s did not, in a CI run beside other tests).
	ids := enqueueEvals(t, b, 12, tasks.EvalOptions{MaxRetry: -1}, 3*time.Second)
	if _, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), time.Minute); archived != len(ids) {
		t.Fatalf("%d of %d junk-answered evals archived", archived, len(ids))
	}
	seen := map[string]bool{}
	for _, id := range ids {
		info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id)
		if err != nil {
			t.Fatal(err)
		}
		matched := false
		for url, name := range byURL {
			if strings.Contains(info.LastErr, url) && strings.Contains(info.LastErr, wantErr[name]) {
				matched, seen[name] = true, true
			}
		}
		if !matched || strings.Contains(info.LastErr, "\n") {
			t.Errorf("eval %s failed with %q: not one line naming its executor and the junk", id, info.LastErr)
		}
	}
	if len(seen) < len(answers)-1 {
		t.Errorf("only %d of %d kinds of junk were met: %v", len(seen), len(answers), seen)
	}
	st, err := b.pool.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range st.Executors {
		if e.State == pool.StateQuarantined {
			out = append(out, e.URL)
		}
	}
	assertPoolWholeBut(t, b, out...)
}

// No free executor: the eval waits without spending its retry budget.
func TestNoExecutorDoesNotSpendRetries(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{ExecutorWait: -1}, refexec.Options{})
	hog, err := b.pool.Acquire(t.Context(), "hog", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	start(t, w)
	enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "eval never found the pool empty", func() bool {
		return testutil.ToFloat64(b.metrics.evals.WithLabelValues(b.pool.Name(), "no_executor")) >= 3
	})
	if _, err := b.pool.Release(t.Context(), hog, pool.ReleaseArgs{Path: "test"}); err != nil {
		t.Fatal(err)
	}
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second); completed != 1 {
		t.Fatal("eval with no retries did not complete after waiting for an executor")
	}
	assertPoolWhole(t, b)
}

// An attempt that finds the pool busy waits in the pool's wait list and is
// handed the executor once it is released: one acquire, no polling, no
// hand-back.
func TestAttemptWaitsForAnExecutor(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{ExecutorWait: time.Minute}, refexec.Options{})
	hog, err := b.pool.Acquire(t.Context(), "hog", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	start(t, w)
	ids := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "eval never started waiting", func() bool {
		st, err := b.pool.Status(t.Context())
		return err == nil && len(st.Waiters) == 1 && st.Waiters[0].EvalID == ids[0]
	})
	time.Sleep(300 * time.Millisecond) // a polling waiter would ask again meanwhile
	if _, err := b.pool.Release(t.Context(), hog, pool.ReleaseArgs{Path: "test"}); err != nil {
		t.Fatal(err)
	}
	evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second)
	if n := testutil.ToFloat64(b.metrics.evals.WithLabelValues(b.pool.Name(), "no_executor")); n != 0 {
		t.Errorf("%v attempts handed back for want of an executor, want 0", n)
	}
	if waited, none, got := b.poolMetrics.Acquires("waiting"), b.poolMetrics.Acquires("none"), b.poolMetrics.Acquires("acquired"); waited != 1 || none != 0 || got != 1 {
		t.Errorf("acquires: %v waiting, %v none, %v acquired (the hog); want 1, 0, 1: the eval asked once and was handed its executor", waited, none, got)
	}
	assertPoolWhole(t, b)
}

// A lease taken over (here by a newer attempt of the same eval) cancels the
// executor call at the next heartbeat, long before the executor answers.
func TestLostLeaseCancelsTheCall(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{LeaseTTL: 150 * time.Millisecond}, refexec.Options{Latency: time.Hour})
	start(t, w)
	ids := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Hour)
	evaltest.Eventually(t, 10*time.Second, "eval never reached the executor", func() bool { return b.executors[0].Stats().Running })
	newer, err := b.pool.Acquire(t.Context(), ids[0], time.Minute, pool.AcquireArgs{})
	if err != nil || !newer.Reentered {
		t.Fatalf("take-over acquire: %+v, %v", newer, err)
	}
	evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second)
	info, err := b.insp.GetTaskInfo(tasks.QueueEvals, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	// Lost at the heartbeat, or at the executor whose lease ran out first.
	if info.State != asynq.TaskStateArchived || !strings.Contains(info.LastErr, "lease") {
		t.Fatalf("eval %s: %q, want archived with the lease lost", info.State, info.LastErr)
	}
	// Its cleanup came after the newer attempt took the lease over: a
	// duplicate of a superseded lease, not an alert; the newer holder keeps
	// the executor.
	if got := releases(b, pool.DuplicateRelease, tasks.PathFailure); got != 1 || b.poolMetrics.DoubleReleases("") != 0 {
		t.Fatalf("superseded failure cleanups = %v, double releases %v; want 1 and 0", got, b.poolMetrics.DoubleReleases(""))
	}
	if _, err := b.pool.Renew(t.Context(), newer, time.Minute); err != nil {
		t.Fatalf("the newer holder lost its lease: %v", err)
	}
	if _, err := b.pool.Release(t.Context(), newer, pool.ReleaseArgs{Path: "test"}); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 5*time.Second, "executor still running the cancelled eval", func() bool { return !b.executors[0].Stats().Running })
	assertPoolWhole(t, b)
}

// panickingTransport stands for a bug anywhere under the handler.
type panickingTransport struct{}

func (panickingTransport) RoundTrip(*http.Request) (*http.Response, error) { panic("bug in transport") }

// A panicking attempt carries no error of ours: the error handler still
// finds its lease and releases it.
func TestPanicIsCleanedUpByTheErrorHandler(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{Executor: &executor.Client{HTTP: &http.Client{Transport: panickingTransport{}}}}, refexec.Options{})
	start(t, w)
	enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	if _, archived := evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second); archived != 1 {
		t.Fatal("panicking eval not archived")
	}
	if got := releases(b, pool.Released, tasks.PathErrorHandler); got != 1 {
		t.Fatalf("error-handler releases = %v, want 1", got)
	}
	beats := w.pools[b.pool.Name()].beats
	beats.mu.Lock()
	kept := len(beats.beats)
	beats.mu.Unlock()
	if kept != 0 {
		t.Fatalf("the heartbeat still keeps %d leases after the panic", kept)
	}
	assertPoolWhole(t, b)
}

// A dead executor fails its attempts with a clear error, at most
// QuarantineAfter of them before it is quarantined; the retries land on
// live executors and the pool stays whole.
func TestDeadExecutor(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{Concurrency: 4}, refexec.Options{}, refexec.Options{})
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // nothing listens there any more
	if _, err := b.pool.Register(t.Context(), pool.Executor{URL: dead.URL}); err != nil {
		t.Fatal(err)
	}
	start(t, w)
	ids := enqueueEvals(t, b, 30, tasks.EvalOptions{MaxRetry: 10}, time.Minute)
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(ids), time.Minute); completed != len(ids) {
		t.Fatalf("%d of %d evals completed", completed, len(ids))
	}
	if n := b.logs.Count("connection refused"); n == 0 || n > pool.DefaultQuarantine+1 {
		t.Fatalf("%d attempts met the dead executor; want 1 to %d (it is quarantined after %d in a row)", n, pool.DefaultQuarantine+1, pool.DefaultQuarantine)
	}
	b.urls = append(b.urls, dead.URL)
	assertPoolWholeBut(t, b, dead.URL)
	assertNoOverlap(t, b)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{})
	defer c.Close()
	p, _ := pool.New(c, pool.Options{})
	same, _ := pool.New(c, pool.Options{})
	noRedis := testParts(c, p)
	noRedis.Redis = nil
	noRuns := testParts(c, p)
	noRuns.Runs = nil
	for _, parts := range []Parts{noRedis, noRuns, testParts(c), testParts(c, p, same), testParts(c, nil)} {
		if _, err := New(parts, Config{}); err == nil {
			t.Errorf("New(%+v) accepted", parts)
		}
	}
	for _, cfg := range []Config{
		{Cleanup: "sometimes"},
		{LeaseTTL: time.Millisecond},
		{Concurrency: -1},
		{ReapInterval: 300 * time.Millisecond},
		{ReapInterval: 1500 * time.Millisecond},
		{ExecutorWait: MaxExecutorWait + time.Second},
		{ShutdownTimeout: -time.Second},
	} {
		if _, err := New(testParts(c, p), cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestConfigDefaults: a zero field takes its exported default, and a
// negative ExecutorWait means no wait, not the default.
func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{})
	defer c.Close()
	p, _ := pool.New(c, pool.Options{})
	w, err := New(testParts(c, p), Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := w.cfg
	for name, pair := range map[string][2]any{
		"Concurrency":         {got.Concurrency, DefaultConcurrency},
		"ReapInterval":        {got.ReapInterval, DefaultReapInterval},
		"ExecutorWait":        {got.ExecutorWait, DefaultExecutorWait},
		"NoExecutorDelay":     {got.NoExecutorDelay, DefaultNoExecutorDelay},
		"PollInterval":        {got.PollInterval, DefaultPollInterval},
		"CleanupPollInterval": {got.CleanupPollInterval, DefaultCleanupPollInterval},
		"ShutdownTimeout":     {got.ShutdownTimeout, DefaultShutdownTimeout},
		"ProbeTimeout":        {got.ProbeTimeout, DefaultProbeTimeout},
		"LeaseTTL":            {got.LeaseTTL, tasks.DefaultLeaseTTL},
		"Cleanup":             {got.Cleanup, CleanupOutcome},
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s defaults to %v, want %v", name, pair[0], pair[1])
		}
	}
	w, err = New(testParts(c, p), Config{ExecutorWait: -1})
	if err != nil || w.cfg.ExecutorWait >= 0 {
		t.Fatalf("ExecutorWait -1: %v, %v; want no wait", w.cfg.ExecutorWait, err)
	}
}

// A real command per eval: one grades its input, one hangs and is killed at
// the eval's deadline; the hung eval errors, saying it ran out of time, and
// its executor comes back, not blamed.
func TestExecCommandThroughTheWorker(t *testing.T) {
	t.Parallel()
	grader := filepath.Join(t.TempDir(), "grade.sh")
	script := `spec=$(cat)
case "$spec" in *hang*) sleep 300 ;; esac
case "$spec" in *42*) s=passed ;; *) s=failed ;; esac
printf '{"status":"%s","score":1}' "$s"
`
	if err := os.WriteFile(grader, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w, b := setup(t, Config{}, refexec.Options{Exec: grader})
	start(t, w)
	for id, spec := range map[string]string{"good": `{"answer":42}`, "wrong": `{"answer":7}`, "hang": `{"hang":true}`} {
		task, err := tasks.NewEval(tasks.Eval{ID: id, Spec: json.RawMessage(spec), TimeoutS: 1}, tasks.EvalOptions{MaxRetry: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	evaltest.WaitEvalsDone(t, b.insp, 3, 30*time.Second)
	for id, want := range map[string]string{"good": `"status":"passed"`, "wrong": `"status":"failed"`} {
		info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id)
		if err != nil || info.State != asynq.TaskStateCompleted || !strings.Contains(string(info.Result), want) {
			t.Errorf("eval %s: %v %s %v; want completed with %s", id, info.State, info.Result, err, want)
		}
	}
	info, err := b.insp.GetTaskInfo(tasks.QueueEvals, "hang")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStateArchived || !strings.Contains(info.LastErr, "errored: timed out") || !strings.Contains(string(info.Result), `"status":"errored"`) {
		t.Fatalf("hung eval: %s %q %s; want archived errored for time", info.State, info.LastErr, info.Result)
	}
	evaltest.Eventually(t, 5*time.Second, "executor still running the hung command", func() bool { return !b.executors[0].Stats().Running })
	assertPoolWhole(t, b)
}

// Redis dies (SIGKILL) under a running worker and comes back on the same
// AOF: the worker keeps running, logs, resumes, and no eval or executor is
// lost.
func TestRedisRestartUnderAWorker(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: []string{"--appendonly", "yes", "--appendfsync", "always"}})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	sim := refexec.Options{Latency: 30 * time.Millisecond}
	w, b := setupOn(t, client, Config{Concurrency: 4, LeaseTTL: time.Second}, sim, sim, sim)
	start(t, w)
	ids := enqueueEvals(t, b, 60, tasks.EvalOptions{MaxRetry: 10}, time.Minute)
	evaltest.Eventually(t, 30*time.Second, "no eval finished before the crash", func() bool {
		q, err := b.insp.GetQueueInfo(tasks.QueueEvals)
		return err == nil && q.Completed >= 10
	})
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 30*time.Second, "the worker never noticed Redis was gone", func() bool {
		return b.logs.Count("connection refused") > 0
	})
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// A task being dequeued when Redis died stays "active" until Asynq's
	// recoverer takes it back: its lease (30 s) must have lapsed 30 s
	// before, and the recoverer runs once a minute, so up to about 2 min.
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(ids), 4*time.Minute); completed != len(ids) {
		t.Fatalf("%d of %d evals completed after the restart", completed, len(ids))
	}
	assertPoolWhole(t, b)
	assertNoOverlap(t, b)
}

// The end-to-end run on a real 3-master Redis Cluster: Asynq's queues and
// the pool's keys each live in their own hash slot, spread over the nodes.
// With --cleanup inline the result and the release share a pipeline across
// two slots, which go-redis splits by node: every result must still reach
// Asynq, and every release the pool.
func TestEvalsOnRedisCluster(t *testing.T) {
	t.Parallel()
	for _, mode := range []CleanupMode{CleanupBoth, CleanupInline} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			cluster := evaltest.ClusterClient(t, evaltest.StartCluster(t, 3))
			sim := refexec.Options{Latency: 2 * time.Millisecond, FailRate: 0.2}
			w, b := setupOn(t, cluster, Config{Cleanup: mode, Concurrency: 6}, sim, sim, sim)
			start(t, w)
			ids := enqueueEvals(t, b, 60, tasks.EvalOptions{MaxRetry: 5}, time.Minute)
			completed, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), time.Minute)
			t.Logf("completed %d, archived %d", completed, archived)
			if dups := b.poolMetrics.Releases(pool.DuplicateRelease, ""); completed == 0 || dups == 0 {
				t.Fatalf("completed %d, duplicate releases %v: the cluster run proves nothing", completed, dups)
			}
			for _, id := range ids {
				info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id)
				if err != nil {
					t.Fatal(err)
				}
				var r tasks.EvalResult
				if info.State == asynq.TaskStateCompleted && (json.Unmarshal(info.Result, &r) != nil || r.EvalID != id) {
					t.Errorf("eval %s completed with result %q", id, info.Result)
				}
			}
			assertPoolWhole(t, b)
			assertNoOverlap(t, b)
		})
	}
}

// TestStopReturnsAbandonedLeases: an eval running longer than the shutdown
// timeout, then a stop: Asynq hands the task back, and the worker does not
// exit before the attempt has given its executor back.
func TestStopReturnsAbandonedLeases(t *testing.T) {
	t.Parallel()
	for _, mode := range []CleanupMode{CleanupOutcome, CleanupBoth, CleanupInline} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			// Idle cleanup servers look at their queue once a second: a
			// cleanup enqueued as the worker stops would wait for the next
			// worker, its executor leased until then.
			w, b := setup(t, Config{Cleanup: mode, ShutdownTimeout: 300 * time.Millisecond, CleanupPollInterval: time.Second},
				refexec.Options{Latency: 20 * time.Second})
			ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			ids := enqueueEvals(t, b, 1, tasks.EvalOptions{}, time.Minute)
			evaltest.Eventually(t, 10*time.Second, "the eval never leased its executor", func() bool {
				st, err := b.pool.Status(t.Context())
				return err == nil && st.Counts[pool.StateLeased] == 1
			})
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the worker never stopped")
			}
			// By the attempt itself, not by a cleanup task that the
			// stopping cleanup servers may never run.
			if n := releases(b, pool.Released, tasks.PathInline); n != 1 {
				t.Fatalf("%v releases by the attempt itself, want 1", n)
			}
			// The worker has exited: its executor must be back now, not
			// when its lease expires.
			st, err := b.pool.Status(t.Context())
			if err != nil || st.Counts[pool.StateAvailable] != 1 {
				t.Fatalf("after the worker exited: %v, %v; want the executor available", st.Counts, err)
			}
			info, err := b.insp.GetTaskInfo(tasks.QueueEvals, ids[0])
			if err != nil || info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted {
				t.Fatalf("the eval after the stop: %+v, %v; want it back in the queue", info, err)
			}
			assertPoolWhole(t, b)
		})
	}
}

// pipelineHook counts the pipelines that write an Asynq task's result
// ahead of the release.
type pipelineHook struct{ resultWithScript atomic.Int64 }

func (h *pipelineHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipelineHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *pipelineHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		result := -1
		for i, c := range cmds {
			if c.Name() != "evalsha" && c.Name() != "fcall" {
				continue
			}
			switch called, _ := c.Args()[1].(string); {
			case called == lua.WriteResult.Hash():
				result = i
			case (called == lua.Release.Hash() || called == lua.Release.Function()) && result >= 0:
				h.resultWithScript.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// TestInlineWritesResultWithRelease: with --cleanup inline an eval's result
// goes in the round trip that releases its executor, ahead of the release,
// and Asynq reads it back as the task's result.
func TestInlineWritesResultWithRelease(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	hook := &pipelineHook{}
	client.AddHook(hook)
	sim := refexec.Options{Latency: time.Millisecond}
	w, b := setupOn(t, client, Config{Cleanup: CleanupInline, Concurrency: 4}, sim, sim)
	start(t, w)
	ids := enqueueEvals(t, b, 20, tasks.EvalOptions{}, time.Minute)
	if completed, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), time.Minute); completed != len(ids) {
		t.Fatalf("completed %d, archived %d; want all %d completed", completed, archived, len(ids))
	}
	for _, id := range ids {
		info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id)
		if err != nil {
			t.Fatal(err)
		}
		var r tasks.EvalResult
		if err := json.Unmarshal(info.Result, &r); err != nil || r.EvalID != id || r.Status != executor.StatusPassed {
			t.Errorf("eval %s result %q: %v", id, info.Result, err)
		}
	}
	if n, inline := hook.resultWithScript.Load(), releases(b, pool.Released, tasks.PathInline); n != int64(len(ids)) || inline != float64(len(ids)) {
		t.Fatalf("%d results sent with a release, %v inline releases; want %d of each", n, inline, len(ids))
	}
	assertPoolWhole(t, b)
}

// cancelOnHook cancels a context when the client sends the command named.
type cancelOnHook struct {
	name   string
	cancel context.CancelFunc
}

func (h cancelOnHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h cancelOnHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == h.name {
			h.cancel()
		}
		return next(ctx, cmd)
	}
}
func (h cancelOnHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestStopWhileStarting: a worker told to stop while it is still starting
// (a SIGTERM right after launch) stops cleanly, not with the error of the
// start-up read it was in.
func TestStopWhileStarting(t *testing.T) {
	t.Parallel()
	for _, command := range []string{"ping", "config", "get"} { // Redis answers, maxmemory-policy, the pool's epoch
		t.Run(command, func(t *testing.T) {
			t.Parallel()
			srv := evaltest.StartT(t, evaltest.Options{})
			client := redis.NewClient(&redis.Options{Addr: srv.Addr})
			t.Cleanup(func() { _ = client.Close() })
			w, _ := setupOn(t, client, Config{}, refexec.Options{})
			ctx, cancel := context.WithCancel(t.Context())
			client.AddHook(cancelOnHook{name: command, cancel: cancel})
			if err := w.Run(ctx); err != nil {
				t.Fatalf("stopped during start-up at %s: %v; want a clean stop", command, err)
			}
		})
	}
}
