//go:build bench

package benchmarks

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/api"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/worker"
)

const (
	followEvals     = 20_000
	followFollowers = 100
	followExecutors = 64
)

type followResult struct {
	wall    float64 // seconds from the submission to the last end
	heapMiB float64 // the process's peak heap in use, MiB
}

// followRun submits a run of followEvals through the API, with followers
// following it from its submission, and measures the run's wall time and
// the peak heap of this process (the API, the worker, the executors and
// the followers' readers, which discard what they read).
func followRun(t *testing.T, srv *evaltest.Server, followers int) followResult {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(client, pool.Options{Name: "bench"})
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := refexec.NewFleet(followExecutors, refexec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	execs := httptest.NewServer(fleet)
	defer execs.Close()
	for i := range followExecutors {
		if _, err := p.Register(t.Context(), pool.Executor{URL: execs.URL + refexec.FleetPath(i)}); err != nil {
			t.Fatal(err)
		}
	}
	ep, err := evalpool.NewClient(client, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := api.New(api.Options{Client: ep, Pool: p.Name()})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	defer ts.Close()
	var body strings.Builder
	body.WriteString(`{"name":"followed","evals":[`)
	for i := range followEvals {
		if i > 0 {
			body.WriteByte(',')
		}
		body.WriteString(`{"spec":{"task":"noop"}}`)
	}
	body.WriteString(`]}`)

	runtime.GC()
	var peak uint64
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	})
	start := time.Now()
	resp, err := http.Post(ts.URL+api.Prefix+"/runs", "application/json", strings.NewReader(body.String()))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("submit: %v, %v", resp, err)
	}
	resp.Body.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var reading sync.WaitGroup
	for range followers {
		reading.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+api.Prefix+"/runs/followed/results?follow=1", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, resp.Body)
		})
	}
	w, err := evalpool.NewWorker(client, evalpool.WorkerConfig{Pools: []string{p.Name()}, Config: worker.Config{Concurrency: 16, Cleanup: worker.CleanupInline, PollInterval: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	wctx, stop := context.WithCancel(t.Context())
	go func() { werr <- w.Run(wctx) }()
	progress := func() (done int) {
		resp, err := http.Get(ts.URL + api.Prefix + "/runs/followed/progress")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var c struct{ Passed, Failed, Errored, Cancelled int }
		_ = jsonDecode(resp.Body, &c)
		return c.Passed + c.Failed + c.Errored + c.Cancelled
	}
	evaltest.Eventually(t, 20*time.Minute, "the followed run never ended", func() bool { return progress() == followEvals })
	wall := time.Since(start).Seconds()
	reading.Wait() // the streams end with the run
	close(stopSampling)
	sampling.Wait()
	stop()
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	return followResult{wall: wall, heapMiB: float64(peak) / (1 << 20)}
}

// follow is the cost of following a run: its wall time and the process's
// peak heap with 100 followers of a 20k-eval run, against none.
func follow(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	fmt.Fprintf(md, "## 7. Following a run\n\nA run of %d evals submitted through the API (`POST /runs`) and run by one worker (concurrency 16, inline cleanup) on %d executors served in-process; followers read `results?follow=1` from its submission to its end. Wall time from the submission to the last end; peak heap in use of the process (API, worker, executors, followers' readers).\n\n", followEvals, followExecutors)
	fmt.Fprintf(md, "| followers | run wall time (s) | peak heap in use (MiB) |\n| ---: | ---: | ---: |\n")
	var wall, heap [2]float64
	for i, n := range []int{0, followFollowers} {
		var walls, heaps []float64
		for range runs() {
			r := followRun(t, srv, n)
			t.Logf("follow: %d followers: %.1f s, peak heap %.0f MiB", n, r.wall, r.heapMiB)
			walls, heaps = append(walls, r.wall), append(heaps, r.heapMiB)
		}
		wall[i], heap[i] = median(walls), median(heaps)
		fmt.Fprintf(md, "| %d | %.1f | %.0f |\n", n, wall[i], heap[i])
	}
	ratio := max(wall[1]/wall[0], heap[1]/heap[0])
	fmt.Fprintf(md, "\n- %d followers vs none: wall time %.2f×, peak heap %.2f× (target ≤ 1.5×: the followers share one reader of what ended): **%s**\n\n",
		followFollowers, wall[1]/wall[0], heap[1]/heap[0], map[bool]string{true: "met", false: "missed"}[ratio <= 1.5])
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
