//go:build bench

package benchmarks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

const (
	idleExecutors = 4
	idleWindow    = 5 * time.Second
	// idleSettle is the time a started worker is given to go idle: its
	// servers' first polls, a second of fast polls after them.
	idleSettle = 3 * time.Second
	// Under load: returnLoadEvals evals of returnDelay each, all enqueued at
	// once, onto idleExecutors executors and twice as many eval slots.
	returnLoadEvals = 400
	returnDelay     = 10 * time.Millisecond
	// Sparse: returnSparseEvals evals, each enqueued on a worker gone idle.
	returnSparseEvals = 4
	returnSparseGap   = 2500 * time.Millisecond
)

// returns notes, per eval, when its executor answered and when the cleanup
// that returned the executor ran (the worker's debug log of it).
type returns struct {
	mu       sync.Mutex
	answered map[string]time.Time
	released map[string]time.Time
}

func newReturns() *returns {
	return &returns{answered: map[string]time.Time{}, released: map[string]time.Time{}}
}

// ServeHTTP is an executor that answers passed after returnDelay.
func (r *returns) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var body struct {
		EvalID string `json:"eval_id"`
	}
	_ = json.NewDecoder(req.Body).Decode(&body)
	time.Sleep(returnDelay)
	r.mu.Lock()
	r.answered[body.EvalID] = time.Now()
	r.mu.Unlock()
	_, _ = w.Write([]byte(`{"status":"passed"}`))
}

// Write reads the worker's log lines for its cleanups.
func (r *returns) Write(p []byte) (int, error) {
	now := time.Now()
	if bytes.Contains(p, []byte(`"message":"cleanup"`)) {
		var l struct{ Eval string }
		if json.Unmarshal(p, &l) == nil {
			r.mu.Lock()
			if _, ok := r.released[l.Eval]; !ok {
				r.released[l.Eval] = now
			}
			r.mu.Unlock()
		}
	}
	return len(p), nil
}

// took is each eval's return latency: its executor's answer to the
// cleanup that returned the executor.
func (r *returns) took() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var d []time.Duration
	for id, a := range r.answered {
		if rel, ok := r.released[id]; ok {
			d = append(d, rel.Sub(a))
		}
	}
	return d
}

func (r *returns) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.released)
}

// idleSetup starts, on a flushed Redis, a worker of default intervals (but
// the cleanups' idle poll) in outcome mode over idleExecutors executors.
func idleSetup(t *testing.T, srv *evaltest.Server, idlePoll time.Duration) (client *redis.Client, r *returns, stop func()) {
	client = redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(client, pool.Options{Name: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	r = newReturns()
	mux := http.NewServeMux()
	for i := range idleExecutors {
		mux.Handle(refexec.FleetPath(i)+"/", http.StripPrefix(refexec.FleetPath(i), r))
	}
	ts := httptest.NewServer(mux)
	for i := range idleExecutors {
		if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	log := zerolog.New(r).Level(zerolog.DebugLevel)
	w, err := worker.New(worker.Config{Redis: client, Pools: []*pool.Pool{p}, Concurrency: 2 * idleExecutors,
		Cleanup: worker.CleanupOutcome, CleanupIdlePollInterval: idlePoll, Logger: &log})
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
	return client, r, func() {
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		ts.Close()
		client.Close()
	}
}

func enqueueReturnEval(t *testing.T, aq *asynq.Client, id string) {
	task, err := tasks.NewEval(tasks.Eval{ID: id, Pool: "idle", Spec: json.RawMessage(`{}`), TimeoutS: 60}, tasks.EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := aq.Enqueue(task); err != nil {
		t.Fatal(err)
	}
}

// idleRun measures one worker: the commands/s it sends Redis idle, and
// its executors' return latencies under load and when an eval finds it
// idle.
func idleRun(t *testing.T, srv *evaltest.Server, idlePoll time.Duration) (perSec float64, load, sparse []time.Duration) {
	client, r, stop := idleSetup(t, srv, idlePoll)
	defer stop()
	time.Sleep(idleSettle)
	before, from := commandCalls(t, client), time.Now()
	time.Sleep(idleWindow)
	perSec = (commandCalls(t, client) - before) / time.Since(from).Seconds()

	aq := asynq.NewClientFromRedisClient(client)
	for i := range returnSparseEvals {
		enqueueReturnEval(t, aq, fmt.Sprintf("sparse-%d", i))
		time.Sleep(returnSparseGap)
	}
	evaltest.Eventually(t, time.Minute, "the sparse evals never returned their executors", func() bool { return r.count() == returnSparseEvals })
	sparse = r.took()

	*r = *newReturns()
	for i := range returnLoadEvals {
		enqueueReturnEval(t, aq, fmt.Sprintf("load-%d", i))
	}
	evaltest.Eventually(t, time.Minute, "the evals under load never returned their executors", func() bool { return r.count() == returnLoadEvals })
	return perSec, r.took(), sparse
}

// idle compares a worker that polls its cleanup queue every 20 ms, busy or
// idle, with one of the default pace: what it costs Redis idle, and how
// soon an executor comes back after its eval (outcome mode).
func idle(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	fmt.Fprintf(md, "## An idle worker\n\n")
	fmt.Fprintf(md, "One worker of default intervals in outcome mode over %d executors and %d eval slots. Idle: the commands it sends Redis (INFO commandstats, the scripts' own commands counted) over %s, %s after it started. Return: from an executor's answer to the end of the cleanup that released it, for %d evals of %s all enqueued at once (under load), and for %d evals each enqueued %s after the last (each finds the worker idle).\n\n",
		idleExecutors, 2*idleExecutors, idleWindow, idleSettle, returnLoadEvals, returnDelay, returnSparseEvals, returnSparseGap)
	fmt.Fprintf(md, "| Cleanup polls | Idle commands/s | Return under load p50 / p95 | Return on an idle worker p50 / max |\n|---|---|---|---|\n")
	configs := []struct {
		name string
		idle time.Duration
	}{
		{"every 20 ms, busy or idle (CleanupIdlePollInterval 20 ms)", worker.DefaultCleanupPollInterval},
		{"every 20 ms busy, every 1 s idle (default)", 0},
	}
	var rates, loadP50, loadP95, sparseP50, sparseMax [2][]float64
	// The two alternate, first one then the other, so that the machine's
	// drift weighs on both alike.
	for run := range runs() {
		for k := range configs {
			i := (k + run) % len(configs)
			rate, load, sparse := idleRun(t, srv, configs[i].idle)
			rates[i] = append(rates[i], rate)
			loadP50[i] = append(loadP50[i], ms(percentile(load, 50)))
			loadP95[i] = append(loadP95[i], ms(percentile(load, 95)))
			sparseP50[i] = append(sparseP50[i], ms(percentile(sparse, 50)))
			sparseMax[i] = append(sparseMax[i], ms(percentile(sparse, 100)))
		}
	}
	for i, c := range configs {
		fmt.Fprintf(md, "| %s | %.0f | %.1f / %.1f ms | %.1f / %.1f ms |\n", c.name, median(rates[i]), median(loadP50[i]), median(loadP95[i]), median(sparseP50[i]), median(sparseMax[i]))
	}
	fmt.Fprintf(md, "\nAn idle worker's cleanup servers hold their dequeues until an eval starts or a cleanup is enqueued; busy, they poll as fast as before. What is left idle is mostly Asynq's own loops (the evals queue's poll and forwarder every PollInterval, each server's heartbeat) and the pool's clock tick.\n\n")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
