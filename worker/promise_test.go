package worker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/redisconn"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// Tasks put on the queues by a plain Asynq client that break the rules the
// pool relies on are archived with a plain reason and never reach an
// executor: a task whose eval ID is not its task ID would share a lease with
// the real eval, and one that names another pool would run on this pool's
// executors or release another pool's lease.
func TestHostileTasksAreRefused(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{}, refexec.Options{Latency: 300 * time.Millisecond})
	ids := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	eval := func(id, pool string) []byte {
		p, _ := json.Marshal(tasks.Eval{ID: id, Pool: pool, Spec: json.RawMessage(`{}`), TimeoutS: 60})
		return p
	}
	cleanup, _ := json.Marshal(tasks.Cleanup{EvalID: ids[0], Pool: "other", URL: b.urls[0], Token: "t", Path: tasks.PathSuccess})
	hostile := []struct {
		taskID, typ, queue string
		payload            []byte
		want               string
	}{
		{"copy-of-" + ids[0], tasks.TypeEval, tasks.QueueEvals, eval(ids[0], ""), "its task ID is copy-of-" + ids[0]},
		{"foreign-eval", tasks.TypeEval, tasks.QueueEvals, eval("foreign-eval", "other"), `names pool "other", which this worker does not serve`},
		{"foreign-cleanup", tasks.TypeCleanupSuccess, tasks.QueueCleanup, cleanup, `names pool "other"`},
	}
	for _, h := range hostile {
		if _, err := b.aq.EnqueueContext(t.Context(), asynq.NewTask(h.typ, h.payload), asynq.TaskID(h.taskID), asynq.Queue(h.queue), asynq.MaxRetry(3)); err != nil {
			t.Fatal(err)
		}
	}
	start(t, w)
	for _, h := range hostile {
		evaltest.Eventually(t, 10*time.Second, h.taskID+" never archived", func() bool {
			info, err := b.insp.GetTaskInfo(h.queue, h.taskID)
			return err == nil && info.State == asynq.TaskStateArchived
		})
		info, _ := b.insp.GetTaskInfo(h.queue, h.taskID)
		// One plain line: no package prefix, no Asynq "(skip retry ...)".
		if strings.Contains(info.LastErr, "skip retry") || strings.Contains(info.LastErr, "tasks:") {
			t.Errorf("%s archived with %q: internal text leaks into what the operator reads", h.taskID, info.LastErr)
		}
		if !strings.Contains(info.LastErr, h.want) || info.Retried != 0 {
			t.Errorf("%s archived after %d retries with %q; want at once with %q", h.taskID, info.Retried, info.LastErr, h.want)
		}
	}
	evaltest.WaitEvalsDone(t, b.insp, 3, 10*time.Second) // the real eval and the two hostile ones
	if st := b.executors[0].Stats(); st.Served != 1 || st.Overlaps != 0 {
		t.Fatalf("executor served %d evals with %d overlaps; want the real eval alone", st.Served, st.Overlaps)
	}
	assertPoolWhole(t, b)
}

// A worker refuses a Redis that may evict the pool's keys, unless told to
// allow it.
func TestEvictingRedisIsRefused(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: []string{"--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"}})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	w, _ := setupOn(t, client, Config{}, refexec.Options{})
	err := w.Run(t.Context())
	if !errors.Is(err, ErrEvictingRedis) || !strings.Contains(err.Error(), "allkeys-lru") {
		t.Fatalf("Run on an allkeys-lru Redis = %v, want ErrEvictingRedis naming the policy", err)
	}

	allowed, ab := setupOn(t, client, Config{AllowEvictingRedis: true}, refexec.Options{})
	start(t, allowed)
	enqueueEvals(t, ab, 1, tasks.EvalOptions{}, time.Minute)
	evaltest.WaitEvalsDone(t, ab.insp, 1, 10*time.Second)
	if ab.logs.Count("Redis may evict keys") == 0 {
		t.Error("no warning that Redis may evict keys")
	}
}

// FLUSHALL under a running worker: the worker says so at error level and
// counts it, evals enqueued after it wait (they are not archived), and they
// run once executors are registered again.
func TestPoolDataLossIsNoticed(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	w, b := setupOn(t, client, Config{ReapInterval: time.Second}, refexec.Options{})
	start(t, w)
	enqueueEvals(t, b, 1, tasks.EvalOptions{}, time.Minute)
	evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second)

	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "the lost pool was never noticed", func() bool {
		return testutil.ToFloat64(b.metrics.poolLost.WithLabelValues(b.pool.Name())) == 1
	})
	if n := b.logs.Count(`"message":"pool data lost`); n != 1 || b.logs.Count(`"level":"error","pool":"default"`) != 1 {
		t.Errorf("%d error lines about the lost pool, want 1:\n%s", n, b.logs)
	}
	// A fresh client: Asynq's remembers the queues it has published, which
	// FLUSHALL removed.
	b.aq = asynq.NewClientFromRedisClient(client)
	ids := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "the waiting eval never said why", func() bool {
		return b.logs.Count("eval waits: the pool has no data") > 0
	})
	info, err := b.insp.GetTaskInfo(tasks.QueueEvals, ids[0])
	if err != nil || info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted {
		t.Fatalf("eval on a lost pool: %+v, %v; want it still waiting", info, err)
	}
	for _, u := range b.urls {
		if _, err := b.pool.Register(t.Context(), pool.Executor{URL: u}); err != nil {
			t.Fatal(err)
		}
	}
	evaltest.WaitEvalsDone(t, b.insp, 1, 20*time.Second)
	// The cleanup queue is missing from Asynq's list of queues since the
	// flush (its clients publish a queue once), so WaitEvalsDone cannot see
	// the cleanup: wait for the executor itself.
	evaltest.Eventually(t, 10*time.Second, "the executor never came back", func() bool {
		c, err := b.pool.Counts(t.Context())
		return err == nil && c.Available == 1
	})
	assertPoolWhole(t, b)
}

// A worker cut off from Redis by a partition cannot renew its lease: it
// cancels the executor call before the lease's deadline in Redis, so that
// the executor is free by the time Redis may hand it on.
func TestPartitionedWorkerGivesUpBeforeTheDeadline(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = direct.Close() })
	proxy := evaltest.StartProxy(t, srv.Addr)
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr, MaxRetries: -1, ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	const ttl = 900 * time.Millisecond
	w, b := setupOn(t, client, Config{LeaseTTL: ttl}, refexec.Options{Latency: time.Hour})
	start(t, w)
	t.Cleanup(proxy.Heal) // before the worker stops: it needs Redis to shut down
	insp := asynq.NewInspectorFromRedisClient(direct)
	aq := asynq.NewClientFromRedisClient(direct)
	task, err := tasks.NewEval(tasks.Eval{ID: "eval-long", Spec: json.RawMessage(`{}`), TimeoutS: 3600}, tasks.EvalOptions{MaxRetry: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := aq.EnqueueContext(t.Context(), task); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "eval never reached the executor", func() bool { return b.executors[0].Stats().Running })
	p, err := pool.New(direct, pool.Options{Name: b.pool.Name()})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	st, err := p.Status(t.Context())
	if err != nil || st.Executors[0].Lease == nil {
		t.Fatalf("status after the cut: %+v, %v", st, err)
	}
	deadline := st.Executors[0].Lease.Deadline
	for b.executors[0].Stats().Running {
		now, err := direct.Time(t.Context()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !now.Before(deadline) {
			t.Fatalf("the executor still ran the eval at Redis time %s, past its lease deadline %s", now, deadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
	proxy.Heal()
	evaltest.Eventually(t, 20*time.Second, "the eval never ended", func() bool {
		info, err := insp.GetTaskInfo(tasks.QueueEvals, "eval-long")
		return err == nil && info.State == asynq.TaskStateArchived && strings.Contains(info.LastErr, "lease lost")
	})
	assertNoOverlap(t, b)
}

// When the pool does hand one executor out twice (here: registered under two
// spellings without the instance check), a lease-aware executor refuses the
// second eval as busy while the first's lease is live: the second eval
// waits, spends no retry, and runs later. Nothing runs twice at once.
func TestBusyExecutorRefusesTheSecondHolder(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{Concurrency: 4}, refexec.Options{Latency: 600 * time.Millisecond})
	alias := strings.Replace(b.urls[0], "127.0.0.1", "localhost", 1)
	if regs, err := b.pool.Register(t.Context(), pool.Executor{URL: alias}); err != nil || regs[0].Outcome != pool.Added {
		t.Fatalf("register the alias: %+v, %v", regs, err)
	}
	start(t, w)
	ids := enqueueEvals(t, b, 4, tasks.EvalOptions{MaxRetry: 1}, time.Minute)
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(ids), 30*time.Second); completed != len(ids) {
		t.Fatalf("%d of %d evals completed", completed, len(ids))
	}
	st := b.executors[0].Stats()
	if st.Busy == 0 || st.Overlaps < st.Busy || st.Served != int64(len(ids)) {
		t.Fatalf("executor stats %+v: want some newcomers refused as busy and every eval run exactly once\n%s", st, b.logs)
	}
	if n := b.logs.Count("the pool handed it out twice"); n == 0 {
		t.Error("no error line says the pool handed the executor out twice")
	}
}

// Waiting does not eat an eval's time: an eval whose wait for an executor
// outlasts its whole timeout still gets that timeout on the executor, and
// completes.
func TestWaitDoesNotEatTheTimeout(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{}, refexec.Options{Latency: 700 * time.Millisecond})
	hog, err := b.pool.Acquire(t.Context(), "hog", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	start(t, w)
	ids := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Second) // a 1 s timeout
	evaltest.Eventually(t, 10*time.Second, "eval never started waiting", func() bool {
		c, err := b.pool.Counts(t.Context())
		return err == nil && c.Waiters == 1
	})
	time.Sleep(1500 * time.Millisecond) // longer than the eval's timeout
	if _, err := b.pool.Release(t.Context(), hog, pool.ReleaseArgs{Path: "test"}); err != nil {
		t.Fatal(err)
	}
	evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second)
	info, err := b.insp.GetTaskInfo(tasks.QueueEvals, ids[0])
	if err != nil || info.State != asynq.TaskStateCompleted {
		t.Fatalf("eval after a wait longer than its timeout: %+v, %v; want completed", info, err)
	}
	assertPoolWhole(t, b)
}

// A worker that stops while its evals wait takes them out of line: an
// executor freed afterwards is not handed to an attempt that is gone.
func TestStoppingWorkerLeavesTheLine(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{ShutdownTimeout: 200 * time.Millisecond}, refexec.Options{})
	hog, err := b.pool.Acquire(t.Context(), "hog", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	enqueueEvals(t, b, 1, tasks.EvalOptions{}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "eval never began to wait", func() bool {
		c, err := b.pool.Counts(t.Context())
		return err == nil && c.Waiters == 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c, err := b.pool.Counts(t.Context()); err != nil || c.Waiters != 0 {
		t.Fatalf("counts after the worker stopped: %+v, %v; want nobody in line", c, err)
	}
	if _, err := b.pool.Release(t.Context(), hog, pool.ReleaseArgs{Path: "test"}); err != nil {
		t.Fatal(err)
	}
	if c, err := b.pool.Counts(t.Context()); err != nil || c.Available != 1 {
		t.Fatalf("counts after the release: %+v, %v; want the executor available, not handed to a stopped worker", c, err)
	}
}

// --cleanup inline: an attempt releases its executor in its handler and
// enqueues no cleanup task; a failed one is still released on a second path
// (the error handler's), whose release is absorbed.
func TestInlineCleanup(t *testing.T) {
	t.Parallel()
	sim := refexec.Options{Latency: 2 * time.Millisecond, FailRate: 0.3}
	w, b := setup(t, Config{Cleanup: CleanupInline, Concurrency: 6}, sim, sim, sim)
	start(t, w)
	ids := enqueueEvals(t, b, 40, tasks.EvalOptions{MaxRetry: 3}, time.Minute)
	evaltest.WaitEvalsDone(t, b.insp, len(ids), time.Minute)
	inline := releases(b, pool.Released, tasks.PathInline)
	failed := testutil.ToFloat64(b.metrics.evals.WithLabelValues(b.pool.Name(), "error"))
	if inline < float64(len(ids)) || failed == 0 {
		t.Fatalf("%v inline releases for %d evals and %v failed attempts; want one per attempt, some failed", inline, len(ids), failed)
	}
	if got := testutil.ToFloat64(b.metrics.cleanupsEnqueued.WithLabelValues(b.pool.Name(), tasks.PathSuccess, "enqueued")); got != 0 {
		t.Errorf("%v success cleanup tasks enqueued in inline mode, want 0", got)
	}
	if absorbed := releases(b, pool.DuplicateRelease, tasks.PathErrorHandler); absorbed != failed {
		t.Errorf("%v error-handler releases absorbed for %v failed attempts: each failed attempt must be released on the second path too", absorbed, failed)
	}
	assertPoolWhole(t, b)
	assertNoOverlap(t, b)
}

// closeOnlyExecutor is an executor that knows nothing of leases: it runs its
// first eval until its caller's connection closes (or for 30 s), which is
// what docs/reliability.md asks of a fencing-only executor. It records when
// each call arrived and ended, and whether two ever ran at once.
type closeOnlyExecutor struct {
	mu       sync.Mutex
	running  int
	overlaps int
	started  []time.Time
	ended    []time.Time
}

func (e *closeOnlyExecutor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/evals" {
		http.NotFound(w, r) // extensions: not known here
		return
	}
	if _, err := io.ReadAll(r.Body); err != nil {
		return
	}
	e.mu.Lock()
	e.running++
	if e.running > 1 {
		e.overlaps++
	}
	e.started = append(e.started, time.Now())
	first := len(e.started) == 1
	e.mu.Unlock()
	if first {
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}
	e.mu.Lock()
	e.running--
	e.ended = append(e.ended, time.Now())
	e.mu.Unlock()
	_, _ = w.Write([]byte(`{"status":"passed"}`))
}

func (e *closeOnlyExecutor) calls() (started, ended int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.started), len(e.ended)
}

// A lease holder whose connection to Redis hangs (a blackhole: no reset, no
// answer) gives its executor up before the lease's deadline in Redis, not
// when the client's read timeout (here 10 s) ends the renewal: every Redis
// call of the heartbeat is bounded by the lease it renews. The executor
// stops an eval only when its caller's connection closes, so an old holder
// that let go late would run beside the next one.
func TestHungRedisConnectionGivesUpBeforeTheDeadline(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = direct.Close() })
	proxy := evaltest.StartProxy(t, srv.Addr)
	conn, err := redisconn.Parse(redisconn.Config{URL: "redis://" + proxy.Addr + "/0?read_timeout=10s&write_timeout=10s"})
	if err != nil {
		t.Fatal(err)
	}
	hung := conn.NewClient()
	t.Cleanup(func() { _ = hung.Close() })

	exec := &closeOnlyExecutor{}
	ts := httptest.NewServer(exec)
	t.Cleanup(ts.Close)
	const ttl = 3 * time.Second
	old, ob := setupOn(t, hung, Config{LeaseTTL: ttl, Concurrency: 1})
	if _, err := ob.pool.Register(t.Context(), pool.Executor{URL: ts.URL}); err != nil {
		t.Fatal(err)
	}
	next, nb := setupOn(t, direct, Config{LeaseTTL: ttl, ReapInterval: time.Second})
	start(t, old)
	t.Cleanup(proxy.Heal) // before the workers stop: they need Redis to shut down
	enqueue := func(id string) {
		task, err := tasks.NewEval(tasks.Eval{ID: id, Spec: json.RawMessage(`{}`), TimeoutS: 60}, tasks.EvalOptions{MaxRetry: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nb.aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	enqueue("eval-old")
	evaltest.Eventually(t, 10*time.Second, "the first eval never reached the executor", func() bool {
		started, _ := exec.calls()
		return started == 1
	})
	start(t, next)
	enqueue("eval-next")
	proxy.Cut()
	evaltest.Eventually(t, 30*time.Second, "the next holder's call never reached the executor", func() bool {
		started, _ := exec.calls()
		return started == 2
	})
	exec.mu.Lock()
	defer exec.mu.Unlock()
	if len(exec.ended) == 0 || exec.overlaps != 0 {
		t.Fatalf("the next holder's call arrived while the old holder still ran its eval (%d calls ended, %d overlaps)\n%s", len(exec.ended), exec.overlaps, ob.logs)
	}
}
