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
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// stamped is an executor that answers after delay and records, for each
// eval, how long after its enqueue it was called (the spec carries the
// enqueue time).
type stamped struct {
	delay time.Duration
	mu    sync.Mutex
	waits []time.Duration
	first time.Time // of the first call
}

func (s *stamped) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Spec struct {
			Enqueued int64 `json:"enqueued"`
		} `json:"spec"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = time.Now()
	}
	s.waits = append(s.waits, time.Since(time.Unix(0, req.Spec.Enqueued)))
	s.mu.Unlock()
	time.Sleep(s.delay)
	_, _ = w.Write([]byte(`{"status":"passed"}`))
}

// latencyRun enqueues n evals, gap apart, onto a worker with the given
// executors, and returns each eval's wait from enqueue to executor call, the
// share of the time the executors were busy from the first call to the last
// release, and the acquire calls per eval.
func latencyRun(t *testing.T, srv *evaltest.Server, executors, n int, delay, gap time.Duration) (waits []time.Duration, busy, acquires float64) {
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	metrics := pool.NewMetrics()
	p, err := pool.New(client, pool.Options{Name: "latency", Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	ex := &stamped{delay: delay}
	mux := http.NewServeMux()
	for i := range executors {
		mux.Handle(executor.FleetPath(i)+"/", http.StripPrefix(executor.FleetPath(i), ex))
	}
	ts := httptest.NewServer(mux)
	defer ts.Close()
	for i := range executors {
		if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL + executor.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := worker.New(worker.Config{Redis: client, Pools: []*pool.Pool{p}, Concurrency: 16, PollInterval: 100 * time.Millisecond})
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
		task, err := tasks.NewEval(tasks.Eval{ID: fmt.Sprintf("lat-%04d", i), Pool: p.Name(), Spec: spec, TimeoutS: 60}, tasks.EvalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := aq.Enqueue(task); err != nil {
			t.Fatal(err)
		}
		time.Sleep(gap)
	}
	for metrics.Releases("", "") < float64(n) {
		time.Sleep(time.Millisecond)
	}
	busy = float64(time.Duration(n)*delay) / float64(time.Duration(executors)*time.Since(ex.first))
	acquires = metrics.Acquires("") / float64(n)
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return ex.waits, busy, acquires
}

func latency(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	var p50, p99, satMean, satP99, satBusy, satAcquires []float64
	const satExecutors, satEvals, satDelay = 4, 200, 20 * time.Millisecond
	for range runs() {
		free, _, _ := latencyRun(t, srv, 16, 200, 0, 10*time.Millisecond)
		p50 = append(p50, float64(percentile(free, 50)))
		p99 = append(p99, float64(percentile(free, 99)))
		sat, busy, acquires := latencyRun(t, srv, satExecutors, satEvals, satDelay, 0)
		satBusy, satAcquires = append(satBusy, busy), append(satAcquires, acquires)
		var sum time.Duration
		for _, d := range sat {
			sum += d
		}
		satMean = append(satMean, float64(sum)/float64(len(sat)))
		satP99 = append(satP99, float64(percentile(sat, 99)))
	}
	// Ideal FIFO on a saturated pool: eval k starts after k/executors
	// rounds of the executors' latency.
	var ideal []time.Duration
	for k := range satEvals {
		ideal = append(ideal, time.Duration(k/satExecutors)*satDelay)
	}
	var idealSum time.Duration
	for _, d := range ideal {
		idealSum += d
	}
	slices.Sort(ideal)
	md.WriteString("## 4. Latency\n\n")
	fmt.Fprintf(md, "Enqueue to executor call with executors free (200 evals, 10 ms apart, 16 executors, one worker, `--poll-interval 100ms`: an idle Asynq worker looks at its queues every 50–150 ms, which is most of this): p50 %s, p99 %s.\n\n",
		time.Duration(median(p50)).Round(time.Millisecond), time.Duration(median(p99)).Round(time.Millisecond))
	fmt.Fprintf(md, "Saturated pool (%d evals at once, %d executors of %s, concurrency 16): an attempt that finds no free executor asks again every ~20 ms for up to `ExecutorWait` (2 s), then hands its task back for a retry 500 ms ± 50%% later (`NoExecutorDelay`); waiting evals are not served in order (those not yet dequeued wait in Asynq's queue, in order):\n\n", satEvals, satExecutors, satDelay)
	md.WriteString("| wait for an executor | mean | p99 |\n| --- | ---: | ---: |\n")
	fmt.Fprintf(md, "| evalpool | %s | %s |\n", time.Duration(median(satMean)).Round(time.Millisecond), time.Duration(median(satP99)).Round(time.Millisecond))
	fmt.Fprintf(md, "| ideal FIFO | %s | %s |\n\n", (idealSum / satEvals).Round(time.Millisecond), percentile(ideal, 99).Round(time.Millisecond))
	fmt.Fprintf(md, "Most of the difference is not order but idle executors: they were busy %.0f%% of the time from the first call to the last release, because an executor comes back only when its cleanup task runs (an idle cleanup server looks at its queue every 10–30 ms) and then waits for the next poll of a waiting attempt. At the ideal FIFO order and that share of busy time the mean wait would be %s, so serving waiters in order would win little. With evals of seconds the gap is a percent or two; with these 20 ms evals it is a third. Waiting costs Redis %.1f acquire calls per eval.\n\n", 100*median(satBusy), time.Duration(float64(idealSum/satEvals)/median(satBusy)).Round(time.Millisecond), median(satAcquires))
}
