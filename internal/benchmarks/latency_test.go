//go:build bench

package benchmarks

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// stamped is an executor that answers after delay and records, for each
// eval, when it was enqueued (the spec carries it) and when its call began
// and ended.
type stamped struct {
	delay time.Duration
	mu    sync.Mutex
	calls []call
	first time.Time // of the first call
	busy  time.Duration
}

type call struct{ enqueued, began time.Time }

func (s *stamped) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	if r.URL.Path != executor.PathEvals {
		http.NotFound(w, r) // a lease extension: this executor enforces no lease
		return
	}
	var req struct {
		Spec struct {
			Enqueued int64 `json:"enqueued"`
		} `json:"spec"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	time.Sleep(s.delay)
	_, _ = w.Write([]byte(`{"status":"passed"}`))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.first.IsZero() || began.Before(s.first) {
		s.first = began
	}
	s.calls = append(s.calls, call{enqueued: time.Unix(0, req.Spec.Enqueued), began: began})
	s.busy += time.Since(began)
}

// waits is each eval's wait for its executor, from its enqueue or from the
// first call, whichever is later: before the first call the worker had not
// yet looked at its queue (an idle Asynq server polls every PollInterval),
// which is Asynq's start, not the pool's waiting. arrivals are the same
// moments, for idealFIFO.
func (s *stamped) waits() (waits, arrivals []time.Duration) {
	for _, c := range s.calls {
		arrived := c.enqueued
		if arrived.Before(s.first) {
			arrived = s.first
		}
		waits = append(waits, c.began.Sub(arrived))
		arrivals = append(arrivals, arrived.Sub(s.first))
	}
	return waits, arrivals
}

// satRun is what latencyRun measured.
type satRun struct {
	// latencies is each eval's enqueue to executor call; waits, the same
	// from the first call on (see stamped.waits).
	latencies, waits []time.Duration
	// ideal is the waits of the same arrivals under an ideal FIFO.
	ideal []time.Duration
	// busy is the share of the time the executors were busy, from the
	// first call to the last release.
	busy float64
	// acquires is the acquire script calls per eval; handed, the share of
	// evals handed an executor from the wait list (each costs a renewal and
	// a wake on the worker's one blocking connection).
	acquires, handed float64
}

// latencyRun enqueues n evals, gap apart, onto a worker with the given
// executors and cleanup mode, and measures each eval's wait from enqueue to
// executor call, how busy the executors were and what waiting cost.
func latencyRun(t *testing.T, srv *evaltest.Server, executors, n int, delay, gap time.Duration, mode worker.CleanupMode) satRun {
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	metrics, wmetrics := pool.NewMetrics(), worker.NewMetrics()
	p, err := pool.New(client, pool.Options{Name: "latency", Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	ex := &stamped{delay: delay}
	mux := http.NewServeMux()
	for i := range executors {
		mux.Handle(refexec.FleetPath(i)+"/", http.StripPrefix(refexec.FleetPath(i), ex))
	}
	ts := httptest.NewServer(mux)
	defer ts.Close()
	for i := range executors {
		if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := evalpool.NewWorker(client, evalpool.WorkerConfig{Pools: []string{p.Name()}, PoolMetrics: metrics, Config: worker.Config{Concurrency: 16, PollInterval: 100 * time.Millisecond, Cleanup: mode, Metrics: wmetrics}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	insp := asynq.NewInspectorFromRedisClient(client)
	evaltest.Eventually(t, 10*time.Second, "the worker's servers never came up", func() bool {
		servers, err := insp.Servers()
		return err == nil && len(servers) > 0
	})
	aq := asynq.NewClientFromRedisClient(client)
	for i := range n {
		spec, _ := json.Marshal(map[string]int64{"enqueued": time.Now().UnixNano()})
		task, err := tasks.NewEval(tasks.Eval{ID: fmt.Sprintf("lat-%04d", i), Pool: p.Name(), Spec: spec, TimeoutS: 600}, tasks.EvalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := aq.Enqueue(task); err != nil {
			t.Fatal(err)
		}
		time.Sleep(gap)
	}
	releases := float64(n)
	if mode == worker.CleanupBoth {
		releases = 2 * float64(n)
	}
	for metrics.Releases("", "") < releases {
		time.Sleep(time.Millisecond)
	}
	ex.mu.Lock()
	waits, arrivals := ex.waits()
	r := satRun{waits: waits, ideal: idealFIFO(arrivals, executors, delay)}
	for _, c := range ex.calls {
		r.latencies = append(r.latencies, c.began.Sub(c.enqueued))
	}
	r.busy = float64(ex.busy) / float64(time.Duration(executors)*time.Since(ex.first))
	ex.mu.Unlock()
	r.acquires = metrics.Acquires("") / float64(n)
	r.handed = histogramCount(t, wmetrics, "evalpool_executor_wait_seconds") / float64(n)
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return r
}

// histogramCount reads the sample count of a worker histogram.
func histogramCount(t *testing.T, m *worker.Metrics, name string) float64 {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			var n float64
			for _, m := range f.GetMetric() {
				n += float64(m.GetHistogram().GetSampleCount())
			}
			return n
		}
	}
	return 0
}

// idealFIFO is the waits of evals arriving at the given moments on
// executors of the given latency, served first in, first out with no idle
// executor time.
func idealFIFO(arrivals []time.Duration, executors int, delay time.Duration) []time.Duration {
	arrivals = slices.Sorted(slices.Values(arrivals))
	free := make([]time.Duration, executors) // when each executor is next free
	var waits []time.Duration
	for _, a := range arrivals {
		i := slices.Index(free, slices.Min(free))
		start := max(a, free[i])
		waits = append(waits, start-a)
		free[i] = start + delay
	}
	return waits
}

func meanOf(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(max(1, len(ds)))
}

func latency(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	var p50, p99 []float64
	for range runs() {
		free := latencyRun(t, srv, 16, 200, 0, 10*time.Millisecond, worker.CleanupOutcome)
		p50 = append(p50, float64(percentile(free.latencies, 50)))
		p99 = append(p99, float64(percentile(free.latencies, 99)))
	}
	md.WriteString("## 4. Latency and a saturated pool\n\n")
	fmt.Fprintf(md, "Enqueue to executor call with executors free (200 evals, 10 ms apart, 16 executors, one worker, `--poll-interval 100ms`: an idle Asynq worker looks at its queues every 50–150 ms, which is most of this): p50 %s, p99 %s.\n\n",
		time.Duration(median(p50)).Round(time.Millisecond), time.Duration(median(p99)).Round(time.Millisecond))

	const satExecutors = 4
	fmt.Fprintf(md, "A saturated pool: %d executors, one worker of concurrency 16, all evals enqueued at once, by cleanup mode and eval length. An attempt that finds no free executor waits in the pool's FIFO wait list; every release, reclaim or registration hands the executor straight to the oldest waiter, and the worker's one blocking connection wakes it. Waits count from the enqueue, or from the first executor call when that is later: until then the worker had not looked at its queue (an idle Asynq server polls every `--poll-interval`, 100 ms here), which is Asynq's start and the same in every mode. *Ideal FIFO* is the same arrivals served in order with no idle executor time, simulated per run. Acquire calls are the acquire script's calls per eval; a handed eval also costs one renewal and one wake (a `BLPOP` answer on the worker's connection). Busy is the time the executors spent serving calls (from a call's arrival to its answer), as a share of their time from the first call to the last release.\n\n", satExecutors)
	md.WriteString("| mode | eval | evals | wait mean / ideal | wait p99 / ideal | executors busy | acquire calls per eval | handed from the wait list |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, c := range []struct {
		delay time.Duration
		n     int
		runs  int
	}{{20 * time.Millisecond, 200, runs()}, {time.Second, 32, min(runs(), 3)}, {10 * time.Second, 12, 1}} {
		for _, mode := range []worker.CleanupMode{worker.CleanupOutcome, worker.CleanupBoth, worker.CleanupInline} {
			var mean, p99, imean, ip99, busy, acq, handed []float64
			for range c.runs {
				r := latencyRun(t, srv, satExecutors, c.n, c.delay, 0, mode)
				mean, p99 = append(mean, float64(meanOf(r.waits))), append(p99, float64(percentile(r.waits, 99)))
				imean, ip99 = append(imean, float64(meanOf(r.ideal))), append(ip99, float64(percentile(r.ideal, 99)))
				busy, acq, handed = append(busy, r.busy), append(acq, r.acquires), append(handed, r.handed)
			}
			im, ip := time.Duration(median(imean)), time.Duration(median(ip99))
			fmt.Fprintf(md, "| %s | %s | %d | %s / %s (%.2f×) | %s / %s (%.2f×) | %.1f%% | %.2f | %.0f%% |\n", mode, c.delay, c.n,
				time.Duration(median(mean)).Round(time.Millisecond), im.Round(time.Millisecond), median(mean)/float64(im),
				time.Duration(median(p99)).Round(time.Millisecond), ip.Round(time.Millisecond), median(p99)/float64(ip),
				100*median(busy), median(acq), 100*median(handed))
		}
	}
	waitCPU, waitAcq := waitingCPU(t, srv, true)
	pollCPU, pollAcq := waitingCPU(t, srv, false)
	fmt.Fprintf(md, "\nWhat waiting costs Redis: 8 workers × 32 slots on 8 executors of 1 s evals (248 attempts waiting at any time), Redis CPU over 10 s: waiting in the wait list %.1f%% of a core (%.0f acquire calls/s); handing the task back and coming again every ~20 ms, as polling does, %.1f%% of a core (%.0f acquire calls/s).\n", 100*waitCPU, waitAcq, 100*pollCPU, pollAcq)
	md.WriteString("\nTargets: acquire-related calls per eval at most 3 at every length; executors busy at least 97% with 1 s evals and 90% with 20 ms evals in inline mode; mean and p99 wait within 1.2× of the ideal FIFO. With `outcome` and `both`, an executor comes back only when its cleanup task runs (a worker running evals looks at its cleanup queue every 20 ms), which short evals feel and long ones do not.\n\n")
	idleWorker(t, srv, md)
}

// waitingCPU measures what waiting costs Redis: 8 workers of concurrency 32
// (in this process) on 8 executors of 1 s evals, 800 evals enqueued at
// once, so that 248 attempts wait at any time. It returns Redis's CPU share
// of one core over a 10 s window in the middle of the run, and the acquire
// calls per second in that window.
func waitingCPU(t *testing.T, srv *evaltest.Server, wait bool) (cpu, acquiresPerSec float64) {
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 256})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	metrics := pool.NewMetrics()
	p, err := pool.New(client, pool.Options{Name: "waiting", Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	ex := &stamped{delay: time.Second}
	mux := http.NewServeMux()
	for i := range 8 {
		mux.Handle(refexec.FleetPath(i)+"/", http.StripPrefix(refexec.FleetPath(i), ex))
	}
	ts := httptest.NewServer(mux)
	defer ts.Close()
	for i := range 8 {
		if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 8 {
		cfg := evalpool.WorkerConfig{Pools: []string{p.Name()}, PoolMetrics: metrics, Config: worker.Config{Concurrency: 32, PollInterval: 100 * time.Millisecond}}
		if !wait {
			// Hand the task back at once and come again: Asynq's retry
			// schedule does the polling.
			cfg.ExecutorWait, cfg.NoExecutorDelay = -1, 20*time.Millisecond
		}
		w, err := evalpool.NewWorker(client, cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = w.Run(ctx) })
	}
	aq := asynq.NewClientFromRedisClient(client)
	for i := range 800 {
		task, err := tasks.NewEval(tasks.Eval{ID: fmt.Sprintf("w-%04d", i), Pool: p.Name(), Spec: json.RawMessage(`{}`), TimeoutS: 600}, tasks.EvalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := aq.Enqueue(task); err != nil {
			t.Fatal(err)
		}
	}
	// Every slot busy or waiting: 248 in line, or as many asking in vain.
	evaltest.Eventually(t, time.Minute, "the workers never filled their slots", func() bool {
		c, err := p.Counts(t.Context())
		if wait {
			return err == nil && c.Waiters >= 248
		}
		return err == nil && c.Leased == 8 && metrics.Acquires("none") >= 248
	})
	cpu0, acq0, t0 := evaltest.RedisCPU(t, client), metrics.Acquires(""), time.Now()
	time.Sleep(10 * time.Second)
	cpu1, acq1, t1 := evaltest.RedisCPU(t, client), metrics.Acquires(""), time.Now()
	cancel()
	wg.Wait()
	window := t1.Sub(t0).Seconds()
	return (cpu1 - cpu0) / window, (acq1 - acq0) / window
}

// idleWorker measures what a worker that runs no eval costs Redis: the
// commands Redis runs a second (INFO commandstats) with one worker of
// default settings on one pool and nothing to do, over a 10 s window; then
// the same within 10 s of an eval, while its fast cleanup servers run.
func idleWorker(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(client, pool.Options{Name: "idle", Metrics: pool.NewMetrics()})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := refexec.New(refexec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(ex)
	defer ts.Close()
	if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL}); err != nil {
		t.Fatal(err)
	}
	w, err := evalpool.NewWorker(client, evalpool.WorkerConfig{Pools: []string{p.Name()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	insp := asynq.NewInspectorFromRedisClient(client)
	servers := func() int {
		s, err := insp.Servers()
		if err != nil {
			t.Fatal(err)
		}
		return len(s)
	}
	evaltest.Eventually(t, 10*time.Second, "the worker's servers never came up", func() bool { return servers() == 2 })
	var idle []float64
	for range runs() {
		idle = append(idle, evaltest.CommandRate(t, client, 10*time.Second))
	}
	task, err := tasks.NewEval(tasks.Eval{ID: "idle-1", Pool: p.Name(), Spec: json.RawMessage(`{}`), TimeoutS: 60}, tasks.EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := asynq.NewClientFromRedisClient(client).Enqueue(task); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "the fast cleanup servers never came up", func() bool { return servers() > 2 })
	fast := evaltest.CommandRate(t, client, 5*time.Second)
	each := make([]string, len(idle))
	for i, r := range idle {
		each[i] = fmt.Sprintf("%.0f", r)
	}
	fmt.Fprintf(md, "An idle worker (defaults: `--poll-interval 1s`, one pool, no eval) costs Redis %.0f commands/s (`INFO commandstats`, 10 s windows; runs: %s) (target ≤ 50): %s. Within 10 s of an eval, while its two fast cleanup servers look at the cleanup queue every 20 ms so that an executor comes back at once, %.0f commands/s. The outcome and both rows above show what an executor's return costs under load.\n\n",
		median(idle), strings.Join(each, ", "), verdict(median(idle) <= 50), fast)
}
