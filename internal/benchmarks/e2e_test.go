//go:build bench

package benchmarks

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

const (
	e2eEvals       = 2000
	e2eConcurrency = 16
	e2eExecutors   = 512 // enough that cleanup latency (an executor stays leased until its cleanup runs) never empties the pool
	e2ePoll        = 50 * time.Millisecond
)

type e2eResult struct {
	perSec, cmds, trips float64
}

// e2eRun pushes e2eEvals tasks through one worker on a flushed Redis and
// measures tasks/s and the Redis commands and round trips per task.
func e2eRun(t *testing.T, srv *evaltest.Server, mode string) e2eResult {
	t.Helper()
	hook := &countingHook{}
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	aq := asynq.NewClientFromRedisClient(client)
	spec := json.RawMessage(`{"task":"noop","input":"` + strings.Repeat("x", 64) + `"}`)

	var done func() bool
	var run func(ctx context.Context) error
	if mode == "plain" {
		var handled atomic.Int64
		for i := range e2eEvals {
			payload, _ := json.Marshal(tasks.Eval{ID: fmt.Sprintf("noop-%05d", i), Spec: spec, TimeoutS: 60})
			if _, err := aq.Enqueue(asynq.NewTask("noop", payload, asynq.Queue(tasks.QueueEvals))); err != nil {
				t.Fatal(err)
			}
		}
		srvA := asynq.NewServerFromRedisClient(client, asynq.Config{
			Concurrency: e2eConcurrency, Queues: map[string]int{tasks.QueueEvals: 1},
			TaskCheckInterval: e2ePoll, DelayedTaskCheckInterval: e2ePoll, Logger: quiet{}, LogLevel: asynq.ErrorLevel,
		})
		mux := asynq.NewServeMux()
		mux.HandleFunc("noop", func(context.Context, *asynq.Task) error { handled.Add(1); return nil })
		done = func() bool { return handled.Load() >= e2eEvals }
		run = func(ctx context.Context) error {
			if err := srvA.Start(mux); err != nil {
				return err
			}
			<-ctx.Done()
			srvA.Shutdown()
			return nil
		}
	} else {
		metrics := pool.NewMetrics()
		p, err := pool.New(client, pool.Options{Name: "bench", Metrics: metrics})
		if err != nil {
			t.Fatal(err)
		}
		fleet, err := executor.NewFleet(e2eExecutors, executor.ServerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(fleet)
		defer ts.Close()
		for i := range e2eExecutors {
			if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL + executor.FleetPath(i)}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range e2eEvals {
			task, err := tasks.NewEval(tasks.Eval{ID: fmt.Sprintf("eval-%05d", i), Spec: spec, TimeoutS: 60}, tasks.EvalOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := aq.Enqueue(task); err != nil {
				t.Fatal(err)
			}
		}
		cleanup, releases := worker.CleanupOutcome, float64(e2eEvals)
		if mode == "both" {
			cleanup, releases = worker.CleanupBoth, 2*e2eEvals
		}
		w, err := worker.New(worker.Config{Redis: client, Pool: p, Concurrency: e2eConcurrency, Cleanup: cleanup, PollInterval: e2ePoll})
		if err != nil {
			t.Fatal(err)
		}
		done = func() bool { return metrics.Releases("", "") >= releases }
		run = w.Run
	}
	client.AddHook(hook)
	cmds0 := commandCalls(t, client)
	trips0 := hook.trips.Load()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- run(ctx) }()
	for !done() {
		time.Sleep(2 * time.Millisecond)
	}
	took := time.Since(start)
	trips := hook.trips.Load() - trips0
	cmds := commandCalls(t, client) - cmds0 - 1 // less the INFO that reads them
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return e2eResult{perSec: e2eEvals / took.Seconds(), cmds: cmds / e2eEvals, trips: float64(trips) / e2eEvals}
}

// quiet is an Asynq logger that drops everything.
type quiet struct{}

func (quiet) Debug(...any) {}
func (quiet) Info(...any)  {}
func (quiet) Warn(...any)  {}
func (quiet) Error(...any) {}
func (quiet) Fatal(...any) {}

func endToEnd(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	modes := []string{"plain", "outcome", "both"}
	res := map[string][]e2eResult{}
	for range runs() {
		for _, m := range modes {
			res[m] = append(res[m], e2eRun(t, srv, m))
		}
	}
	med := func(m string, f func(e2eResult) float64) float64 {
		var v []float64
		for _, r := range res[m] {
			v = append(v, f(r))
		}
		return median(v)
	}
	perSec := func(r e2eResult) float64 { return r.perSec }
	plain := med("plain", perSec)
	fmt.Fprintf(md, "## 2. End to end vs plain Asynq\n\n%d tasks through one worker of concurrency %d on one Redis, already enqueued; the executors (%d) answer at once over loopback HTTP. There are many of them because an executor stays leased until its cleanup runs, up to one cleanup poll (20 ms) after its eval: at thousands of zero-length evals a second that empties a small pool (with 64 executors the outcome figure fell to 15%%, the pool, not the worker, limiting), while real evals take seconds and make that holdover noise. Plain Asynq runs a no-op handler on tasks of the same payload. An eval counts when its release is done (with `--cleanup both`, both releases).\n\n", e2eEvals, e2eConcurrency, e2eExecutors)
	md.WriteString("| run | tasks/s | vs plain Asynq | Redis commands per eval | round trips per eval |\n| --- | ---: | ---: | ---: | ---: |\n")
	names := map[string]string{"plain": "plain Asynq no-op", "outcome": "evalpool, outcome cleanup", "both": "evalpool, `--cleanup both`"}
	for _, m := range modes {
		fmt.Fprintf(md, "| %s | %.0f | %.0f%% | %.1f | %.1f |\n", names[m], med(m, perSec), 100*med(m, perSec)/plain,
			med(m, func(r e2eResult) float64 { return r.cmds }), med(m, func(r e2eResult) float64 { return r.trips }))
	}
	outcome, both := med("outcome", perSec)/plain, med("both", perSec)/plain
	fmt.Fprintf(md, "\n- outcome cleanup: %.0f%% of plain Asynq (target ≥ 40%%): %s\n", 100*outcome, verdict(outcome >= 0.40))
	fmt.Fprintf(md, "- `--cleanup both`: %.0f%% of plain Asynq (target ≥ 30%%): %s\n\n", 100*both, verdict(both >= 0.30))
	md.WriteString("Round trips per eval, counted by a go-redis hook on the one client the worker, the pool and Asynq share, from the first dequeue on (the enqueue is done before the clock starts); the least the design needs: the eval's dequeue and completion (2, as for any Asynq task), the acquire (1), the result write (1), the cleanup's enqueue, dequeue and completion (3) and its release (1): 8 (12 with both cleanups). Above that are no-executor retries (3 round trips each) when cleanups fall behind. Commands per eval are `INFO commandstats` deltas: every command Redis ran, those inside scripts included (evalpool's scripts run 15–20 each, 7 of them the `TYPE` checks), and Asynq's background work (heartbeats, forwarder, janitor) during the run.\n\n")
}
