//go:build bench

package benchmarks

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

const (
	storeEvals  = 5000
	cancelEvals = 100_000
)

// storeEnv overrides a count for a quick look (EVALPOOL_BENCH_STORE_EVALS,
// EVALPOOL_BENCH_CANCEL_EVALS).
func storeEnv(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// flushedPool flushes srv's Redis and returns a client of it and a pool
// on it.
func flushedPool(t *testing.T, srv *evaltest.Server, name string) (*redis.Client, *pool.Pool) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 32})
	if err := rdb.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(rdb, pool.Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return rdb, p
}

// bytesPerEval runs a run of n tiny evals through a real worker (inline
// cleanup) on a flushed Redis and returns used_memory's growth per
// completed eval, from before the submit to after the last end, less the
// pool's history stream (capped at 100,000 ends whatever the evals): as
// the evals ended (perEval), and once their tasks are gone (kept).
func bytesPerEval(t *testing.T, srv *evaltest.Server, n int) (perEval, kept, history float64) {
	t.Helper()
	ctx := t.Context()
	rdb, p := flushedPool(t, srv, "store")
	defer rdb.Close()
	fleet, err := refexec.NewFleet(64, refexec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(fleet)
	defer ts.Close()
	for i := range 64 {
		if _, err := p.Register(ctx, pool.Executor{URL: ts.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	store := run.NewStore(rdb, run.Options{})
	evals := make([]tasks.Eval, n)
	for i := range evals {
		evals[i] = tasks.Eval{Spec: json.RawMessage(`{"task":"noop"}`)}
	}
	aq := asynq.NewClientFromRedisClient(rdb)
	defer aq.Close()
	m0 := evaltest.Info(t, rdb, "memory", "used_memory")[0]
	if _, err := client.Submit(ctx, aq, asynq.NewInspectorFromRedisClient(rdb), p, store, client.RunRequest{Name: "bytes", Evals: evals}); err != nil {
		t.Fatal(err)
	}
	w, err := evalpool.NewWorker(rdb, evalpool.WorkerConfig{Pools: []string{p.Name()}, Config: worker.Config{Concurrency: 16, Cleanup: worker.CleanupInline, PollInterval: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- w.Run(wctx) }()
	evaltest.Eventually(t, 10*time.Minute, "the run was not done", func() bool {
		c, err := store.Progress(ctx, "bytes")
		if err != nil {
			t.Fatal(err)
		}
		return c.Done() == n
	})
	// Asynq marks a task completed after its handler returned: wait for
	// the queue to hold only completed tasks.
	insp := asynq.NewInspectorFromRedisClient(rdb)
	evaltest.Eventually(t, time.Minute, "the queue did not drain", func() bool {
		info, err := insp.GetQueueInfo(tasks.Queues(p.Name()).Evals)
		if err != nil {
			t.Fatal(err)
		}
		return info.Pending+info.Active+info.Retry+info.Scheduled == 0
	})
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	m1 := evaltest.Info(t, rdb, "memory", "used_memory")[0]
	h, _ := rdb.MemoryUsage(ctx, keys.ForPool(p.Name()).History(), 0).Result()
	// What stays for the rest of the run's retention once the tasks'
	// passed: Asynq's janitor deletes expired completed tasks, done here
	// at once.
	if _, err := insp.DeleteAllCompletedTasks(tasks.Queues(p.Name()).Evals); err != nil {
		t.Fatal(err)
	}
	m2 := evaltest.Info(t, rdb, "memory", "used_memory")[0]
	return (m1 - m0 - float64(h)) / float64(n), (m2 - m0 - float64(h)) / float64(n), float64(h) / float64(n)
}

// cancelTime submits a run of n evals to a pool no worker serves and times
// client.CancelRun of it: every eval pending.
func cancelTime(t *testing.T, srv *evaltest.Server, n int) time.Duration {
	t.Helper()
	ctx := t.Context()
	rdb, p := flushedPool(t, srv, "cancel")
	defer rdb.Close()
	// An executor no worker calls: a pool without one refuses the submit.
	if _, err := p.Register(ctx, pool.Executor{URL: "http://unserved"}); err != nil {
		t.Fatal(err)
	}
	store := run.NewStore(rdb, run.Options{})
	evals := make([]tasks.Eval, n)
	for i := range evals {
		evals[i] = tasks.Eval{Spec: json.RawMessage(`{"task":"noop"}`)}
	}
	aq := asynq.NewClientFromRedisClient(rdb)
	defer aq.Close()
	if _, err := client.Submit(ctx, aq, asynq.NewInspectorFromRedisClient(rdb), p, store, client.RunRequest{Name: "cancelled", Evals: evals}); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	start := time.Now()
	c, err := client.CancelRun(ctx, insp, p, store, "cancelled")
	took := time.Since(start)
	if err != nil || c.Pending != n {
		t.Fatalf("cancel: %+v, %v; want %d pending cancelled", c, err, n)
	}
	if got, err := store.Progress(ctx, "cancelled"); err != nil || got.Cancelled != n {
		t.Fatalf("after cancel: %+v, %v", got, err)
	}
	return took
}

// bytesBefore is what a completed run eval cost in Redis, measured as
// runStore does, before a run's eval kept its output once and its task an
// hour: 1,508 bytes at commit eb0cc59.
const bytesBefore = 1508

// runStore measures what a run costs to keep and to cancel.
func runStore(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	n, nc := storeEnv("EVALPOOL_BENCH_STORE_EVALS", storeEvals), storeEnv("EVALPOOL_BENCH_CANCEL_EVALS", cancelEvals)
	var perEval, kept, history, cancels []float64
	for range runs() {
		b, k, h := bytesPerEval(t, srv, n)
		perEval, kept, history = append(perEval, b), append(kept, k), append(history, h)
		cancels = append(cancels, cancelTime(t, srv, nc).Seconds())
	}
	fmt.Fprintf(md, "## 8. Run storage: bytes per completed eval, and cancelling a run\n\n"+
		"A run of %s evals of a tiny spec (`{\"task\":\"noop\"}`, keys 1..n) through one worker (`--cleanup inline`, 64 reference executors); `used_memory` from before the submit to after the last end, per eval, less the pool's history stream (one entry per lease, capped at 100,000 whatever the evals: %.0f bytes per eval here). Then a run of %s evals that no worker serves, all pending, cancelled with `run cancel` (`client.CancelRun`).\n\n",
		thousands(n), median(history), thousands(nc))
	md.WriteString("| what | figure |\n| --- | ---: |\n")
	fmt.Fprintf(md, "| Redis bytes per completed eval of a run, as it ended | %.0f |\n", median(perEval))
	fmt.Fprintf(md, "| the same once its Asynq task is gone (expired and deleted by Asynq's janitor) | %.0f |\n", median(kept))
	fmt.Fprintf(md, "| cancel %s pending evals of a run | %.1f s |\n\n", thousands(nc), median(cancels))
	fmt.Fprintf(md, "- against %d bytes, the release before this one measured the same way: %.2f× as it ended, %.2f× once the task is gone, which is what a run's retention holds (target ≤ 0.5×): **%s**\n\n",
		bytesBefore, median(perEval)/bytesBefore, median(kept)/bytesBefore, map[bool]string{true: "met", false: "missed"}[median(kept)/bytesBefore <= 0.5])
}
