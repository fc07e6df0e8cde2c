//go:build bench

package benchmarks

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

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

const (
	fairExecutors = 8
	fairLatency   = 50 * time.Millisecond
	fairEvals     = 800
	fairBacklog   = 100_000
	fairWindow    = 20 * time.Second
)

// fairPool is a flushed Redis with a pool of fairExecutors executors whose
// calls take fairLatency, behind RunCalls, and one worker.
type fairPool struct {
	c     *evalpool.Client
	calls *evaltest.RunCalls
	stop  func()
}

func newFairPool(t *testing.T, srv *evaltest.Server) *fairPool {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	if err := rdb.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := refexec.NewFleet(fairExecutors, refexec.Options{Latency: fairLatency})
	if err != nil {
		t.Fatal(err)
	}
	calls := evaltest.NewRunCalls(fleet)
	execs := httptest.NewServer(calls)
	p, err := c.Pool("fair")
	if err != nil {
		t.Fatal(err)
	}
	for i := range fairExecutors {
		if _, err := p.Register(t.Context(), pool.Executor{URL: execs.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := evalpool.NewWorker(rdb, evalpool.WorkerConfig{Pools: []string{"fair"}, Config: worker.Config{
		Concurrency: 16, Cleanup: worker.CleanupInline, PollInterval: 20 * time.Millisecond, NoExecutorDelay: 20 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	return &fairPool{c: c, calls: calls, stop: func() {
		cancel()
		<-ran
		execs.Close()
		_ = rdb.Close()
	}}
}

func fairSuite(n int) []tasks.Eval {
	evals := make([]tasks.Eval, n)
	for i := range evals {
		evals[i] = tasks.Eval{ID: fmt.Sprint(i), Spec: json.RawMessage(`{}`)}
	}
	return evals
}

// waitRun waits for run name to end, and returns when it did.
func (f *fairPool) waitRun(t *testing.T, name string) time.Time {
	t.Helper()
	evaltest.Eventually(t, 10*time.Minute, "run "+name+" ended", func() bool {
		c, err := f.c.Runs().Progress(t.Context(), name)
		return err == nil && c.Pending == 0 && c.Running == 0
	})
	return time.Now()
}

func (f *fairPool) submit(t *testing.T, name string, req client.RunRequest) {
	t.Helper()
	req.Name = name
	if _, err := f.c.SubmitRun(t.Context(), "fair", req); err != nil {
		t.Fatal(err)
	}
}

// fairShare measures the fair share between runs (docs/design.md, 5.5):
// what admission costs a run alone against the same evals enqueued first
// come, first served; a small run behind a large backlog; and the split of
// two backlogged runs of weights 3 and 1, at the executors.
func fairShare(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	var ratios, smallAlone, smallBehind, shares []float64
	var rows []string
	for i := range runs() {
		f := newFairPool(t, srv)
		start := time.Now()
		ids := make([]string, fairEvals)
		evals := fairSuite(fairEvals)
		for j := range evals {
			evals[j].ID = fmt.Sprintf("fifo-%d", j)
			ids[j] = evals[j].ID
		}
		// Straight to the queue, as before the fair share: first come,
		// first served.
		aq := asynq.NewClientFromRedisClient(f.c.Redis())
		for _, e := range evals {
			e.Pool = "fair"
			task, err := tasks.NewEval(e, tasks.EvalOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := aq.EnqueueContext(t.Context(), task); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.c.Wait(t.Context(), "fair", ids, client.WaitOptions{Every: 20 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		fifo := time.Since(start)
		start = time.Now()
		f.submit(t, "alone", client.RunRequest{Evals: fairSuite(fairEvals)})
		admitted := f.waitRun(t, "alone").Sub(start)
		ratio := admitted.Seconds() / fifo.Seconds()

		start = time.Now()
		f.submit(t, "small-alone", client.RunRequest{Evals: fairSuite(10)})
		alone := f.waitRun(t, "small-alone").Sub(start)
		f.submit(t, "backlog", client.RunRequest{Evals: fairSuite(fairBacklog)})
		start = time.Now()
		f.submit(t, "small", client.RunRequest{Evals: fairSuite(10)})
		behind := f.waitRun(t, "small").Sub(start)
		if _, err := f.c.CancelRun(t.Context(), "backlog"); err != nil {
			t.Fatal(err)
		}

		f.submit(t, "three", client.RunRequest{Evals: fairSuite(20_000), Weight: 3})
		f.submit(t, "one", client.RunRequest{Evals: fairSuite(20_000), Weight: 1})
		// Settled once the light run holds its share, 2 of the 8 executors.
		evaltest.Eventually(t, 10*time.Second, "the weight 1 run holding its share", func() bool { return f.calls.Peak("one") >= 2 })
		from := time.Now()
		time.Sleep(fairWindow)
		three, one := f.calls.Busy("three", from, time.Now()), f.calls.Busy("one", from, time.Now())
		share := 100 * three.Seconds() / (three + one).Seconds()
		for _, name := range []string{"three", "one"} {
			if _, err := f.c.CancelRun(t.Context(), name); err != nil {
				t.Fatal(err)
			}
		}
		f.stop()

		ratios, smallAlone, smallBehind, shares = append(ratios, ratio), append(smallAlone, alone.Seconds()), append(smallBehind, behind.Seconds()), append(shares, share)
		rows = append(rows, fmt.Sprintf("| %d | %.2f s | %.2f s | %.3f | %.2f s | %.2f s | %.0f/%.0f |", i+1, fifo.Seconds(), admitted.Seconds(), ratio, alone.Seconds(), behind.Seconds(), share, 100-share))
	}
	fmt.Fprintf(md, "## Fair share between runs\n\n%d executors whose calls take %s, one worker (concurrency 16, inline cleanup). A run alone: %d evals submitted as a run (admitted by the fair share) against the same evals put on the queue first come, first served, as before the fair share, one after the other on the same pool. A 10-eval run alone, and behind a run of %d evals submitted just before it. Two backlogged runs of weights 3 and 1: their share of the executors' time over %s, measured at the executors.\n\n", fairExecutors, fairLatency, fairEvals, fairBacklog, fairWindow)
	fmt.Fprintf(md, "| run | %d evals FIFO | as a run | ratio | 10 evals alone | behind %d | weights 3:1 |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n", fairEvals, fairBacklog)
	for _, r := range rows {
		fmt.Fprintln(md, r)
	}
	fmt.Fprintf(md, "| median | | | %.3f | %.2f s | %.2f s | %.0f/%.0f |\n\n", median(ratios), median(smallAlone), median(smallBehind), median(shares), 100-median(shares))
	fmt.Fprintf(md, "- a run's throughput against FIFO: %.1f%% (target within 5%%): %s\n", 100*(median(ratios)-1), verdict(median(ratios) <= 1.05))
	fmt.Fprintf(md, "- 10 evals behind %d: %.1f× their time alone (target ≤ 3×): %s\n", fairBacklog, median(smallBehind)/median(smallAlone), verdict(median(smallBehind) <= 3*median(smallAlone)))
	fmt.Fprintf(md, "- weights 3:1: %.0f/%.0f (target 75/25 ± 10): %s\n\n", median(shares), 100-median(shares), verdict(median(shares) >= 65 && median(shares) <= 85))
}
