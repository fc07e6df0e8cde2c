package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// BenchmarkEvalInline pushes b.N evals through a worker with inline cleanup,
// on a Redis and a fleet of reference executors of its own, as the
// end-to-end benchmark does (internal/benchmarks). Its allocations per op
// are the whole process's per eval: the worker, Asynq, go-redis and the
// executors' HTTP side. It is for allocation counts, which are the same on
// any machine; its time depends on the machine and on what else runs there.
//
//	go test -run '^$' -bench EvalInline -benchtime 2000x ./worker
func BenchmarkEvalInline(b *testing.B) {
	srv := evaltest.StartT(b, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = client.Close() })
	poolMetrics := pool.NewMetrics()
	p, err := pool.New(client, pool.Options{Name: "bench", Metrics: poolMetrics})
	if err != nil {
		b.Fatal(err)
	}
	const executors = 64
	fleet, err := refexec.NewFleet(executors, refexec.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(fleet)
	b.Cleanup(ts.Close)
	for i := range executors {
		if _, err := p.Register(b.Context(), pool.Executor{URL: ts.URL + refexec.FleetPath(i)}); err != nil {
			b.Fatal(err)
		}
	}
	// The queue is paused while the evals are enqueued and the worker
	// starts, so that the timer measures the evals alone.
	insp := asynq.NewInspectorFromRedisClient(client)
	queue := tasks.Queues(p.Name()).Evals
	aq := asynq.NewClientFromRedisClient(client)
	spec := json.RawMessage(`{"task":"noop","input":"` + strings.Repeat("x", 64) + `"}`)
	for i := range b.N {
		task, err := tasks.NewEval(tasks.Eval{ID: fmt.Sprintf("eval-%06d", i), Pool: p.Name(), Spec: spec, TimeoutS: 60}, tasks.EvalOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := aq.Enqueue(task); err != nil {
			b.Fatal(err)
		}
	}
	if err := insp.PauseQueue(queue); err != nil {
		b.Fatal(err)
	}
	w, err := New(testParts(client, p), Config{Concurrency: 16, Cleanup: CleanupInline, PollInterval: 50 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	evaltest.Run(b, "worker", w.Run)
	evaltest.Eventually(b, 10*time.Second, "the worker never started", func() bool {
		servers, err := insp.Servers()
		return err == nil && len(servers) >= 2 // evals, cleanups
	})

	b.ReportAllocs()
	b.ResetTimer()
	if err := insp.UnpauseQueue(queue); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.Context(), time.Minute)
	defer cancel()
	for poolMetrics.Releases("", "") < float64(b.N) {
		select {
		case <-ctx.Done():
			b.Fatalf("%v of %d evals released in a minute", poolMetrics.Releases("", ""), b.N)
		case <-time.After(10 * time.Millisecond):
		}
	}
	b.StopTimer()
}
