//go:build bench

package benchmarks

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

// runs is how many times each figure is measured; the report gives medians.
func runs() int {
	if n, err := strconv.Atoi(os.Getenv("EVALPOOL_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile of durations, p in [0, 100].
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// countingHook counts the round trips a client makes: a command or a
// pipeline is one. It also times the dequeues of one queue (Asynq's dequeue
// script is the one script that names the queue's paused key), since a
// server's rate is one over its dequeue's round trip.
type countingHook struct {
	trips atomic.Int64
	// paused is the queue's paused key; dequeues and dequeueNs count its
	// dequeues and their round trips' sum.
	paused              string
	dequeues, dequeueNs atomic.Int64
}

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Add(1)
		if cmd.Name() != "evalsha" || !slices.Contains(cmd.Args(), any(h.paused)) {
			return next(ctx, cmd)
		}
		start := time.Now()
		err := next(ctx, cmd)
		h.dequeueNs.Add(int64(time.Since(start)))
		h.dequeues.Add(1)
		return err
	}
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Add(1)
		return next(ctx, cmds)
	}
}

// commandCalls sums the calls in INFO commandstats, less INFO's own.
func commandCalls(t *testing.T, c redis.UniversalClient) float64 {
	return evaltest.CommandStat(t, c, "calls", func(name string) bool { return name != "info" })
}

// processCPU is the CPU this process has used, user and system, in seconds.
func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func machine(t *testing.T, c redis.UniversalClient) string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	ver, _ := c.Info(t.Context(), "server").Result()
	redisVersion := "?"
	for line := range strings.Lines(ver) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			redisVersion = v
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s; %s; Redis %s (a redis-server started by the harness, loopback, no persistence); %s",
		cpu, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), redisVersion, time.Now().UTC().Format("2006-01-02"))
}

// buildBinary builds cmd/evalpool for the process-level figures.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "evalpool")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/evalpool").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestWriteBenchmarks measures everything and writes BENCHMARKS.md
// (EVALPOOL_BENCH_OUT names another file).
func TestWriteBenchmarks(t *testing.T) {
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer client.Close()

	var md strings.Builder
	fmt.Fprintf(&md, "# Benchmarks\n\nWritten by `make bench` (`internal/benchmarks`). Machine: %s. Each figure is the median of %d runs.\n\n", machine(t, client), runs())
	sections := []struct {
		name string
		run  func()
	}{
		{"pool", func() { poolVsSize(t, &md) }},
		{"e2e", func() { endToEnd(t, srv, &md) }},
		{"memory", func() { memory(t, client, &md) }},
		{"latency", func() { latency(t, srv, &md) }},
		{"scale", func() { scale(t, srv, &md) }},
		{"heartbeats", func() { heartbeats(t, &md) }},
		{"runstore", func() { runStore(t, srv, &md) }},
		{"follow", func() { follow(t, srv, &md) }},
		{"fair", func() { fairShare(t, srv, &md) }},
		{"pages", func() { pages(t, srv, &md) }},
	}
	only := os.Getenv("EVALPOOL_BENCH_ONLY") // e.g. "e2e,memory", for working on one figure
	for _, s := range sections {
		if only == "" || slices.Contains(strings.Split(only, ","), s.name) {
			start := time.Now()
			s.run()
			t.Logf("%s: %s", s.name, time.Since(start).Round(time.Second))
		}
	}

	out := os.Getenv("EVALPOOL_BENCH_OUT")
	if out == "" {
		out = "../../BENCHMARKS.md"
	}
	if err := os.WriteFile(out, []byte(md.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s\n%s", out, md.String())
}

// parallel runs f on n goroutines until it has been called total times or
// budget has passed, and returns the calls made and the time taken.
func parallel(n int, total int64, budget time.Duration, f func() error) (int64, time.Duration, error) {
	var done atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for time.Since(start) < budget {
				if done.Add(1) > total { // a call reserved before it is made
					done.Add(-1)
					return
				}
				if err := f(); err != nil {
					done.Add(-1)
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return done.Load(), time.Since(start), firstErr
}
