package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// startWorkerProc runs `evalpool worker` as a process of its own until the
// test ends.
func startWorkerProc(t *testing.T, redisURL string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"--redis", redisURL, "worker"}, args...)...)
	cmd.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
	cmd.Stderr = &evaltest.LogBuffer{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// heldPool starts a Redis of the test's own with the default pool of one
// executor, already leased by hand; release gives it back.
func heldPool(t *testing.T, opts refexec.Options) (srv *evaltest.Server, client *redis.Client, p *pool.Pool, servers []*refexec.Server, release func()) {
	t.Helper()
	srv = evaltest.StartT(t, evaltest.Options{})
	client = redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	p, err := pool.New(client, pool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	servers, urls := startExecutors(t, 1, opts)
	if r := runCLI(t, srv.URL(), "default", "pool", "add", urls[0]); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	hog, err := p.Acquire(t.Context(), "hog", time.Hour, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	return srv, client, p, servers, func() {
		if _, err := p.Release(t.Context(), hog, pool.ReleaseArgs{Path: "test"}); err != nil {
			t.Fatal(err)
		}
	}
}

// Evals waiting in two worker processes are served in the order they began
// to wait: the fences the pool handed them rise in that order.
func TestWaitersAreServedFirstInFirstOut(t *testing.T) {
	t.Parallel()
	srv, client, p, servers, release := heldPool(t, refexec.Options{Latency: 20 * time.Millisecond})
	// Admission lets twice the executors in service wait at once: five
	// more, held for good, let all 12 wait.
	for i := range 5 {
		if _, err := p.Register(t.Context(), pool.Executor{URL: fmt.Sprintf("http://127.0.0.1:1/held-%d", i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Acquire(t.Context(), fmt.Sprint("hog-", i), time.Hour, pool.AcquireArgs{}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		startWorkerProc(t, srv.URL(), "--concurrency", "8", "--poll-interval", "50ms")
	}
	const n = 12
	for i := range n {
		if r := runCLI(t, srv.URL(), "default", "enqueue", "--spec", `{}`, "--max-retry", "0"); r.code != 0 {
			t.Fatalf("enqueue: %+v", r)
		}
		evaltest.Eventually(t, 10*time.Second, "eval never began to wait", func() bool {
			c, err := p.Counts(t.Context())
			return err == nil && c.Waiters == int64(i+1)
		})
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var line []string
	for _, w := range st.Waiters {
		line = append(line, w.EvalID)
	}
	release()
	insp := asynq.NewInspectorFromRedisClient(client)
	evaltest.WaitEvalsDone(t, insp, n, 30*time.Second)
	fences := map[string]int64{}
	for _, id := range line {
		info, err := insp.GetTaskInfo(tasks.QueueEvals, id)
		if err != nil {
			t.Fatal(err)
		}
		if info.MaxRetry != tasks.NoExecutorReserve {
			t.Fatalf("eval %s of --max-retry 0: Asynq's max retry %d, want only the no-executor reserve", id, info.MaxRetry)
		}
		var r tasks.EvalResult
		if err := json.Unmarshal(info.Result, &r); err != nil {
			t.Fatalf("eval %s: %s: %v", id, info.Result, err)
		}
		fences[id] = r.Fence
	}
	if !slices.IsSortedFunc(line, func(a, b string) int { return int(fences[a] - fences[b]) }) {
		var got []string
		for _, id := range line {
			got = append(got, strings.Join([]string{id[:8], time.UnixMilli(fences[id]).Format("05.000")}, "@"))
		}
		t.Fatalf("evals in line %v were not served in that order (fences %v)", line, got)
	}
	if st := servers[0].Stats(); st.Overlaps != 0 || st.Served != n {
		t.Fatalf("executor %+v: want %d evals, no overlap", st, n)
	}
}

// A waiter SIGKILLed just before an executor is handed to it never keeps the
// executor: the lease nobody renews expires, and the reaper of any worker
// returns the executor within its TTL, the grace and the reap interval.
func TestKilledWaiterDoesNotStrandAHandedExecutor(t *testing.T) {
	t.Parallel()
	srv, _, p, servers, release := heldPool(t, refexec.Options{})
	const ttl, reapEvery = time.Second, time.Second
	victim := startWorkerProc(t, srv.URL(), "--lease-ttl", ttl.String(), "--poll-interval", "50ms")
	if r := runCLI(t, srv.URL(), "default", "enqueue", "--spec", `{}`); r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	evaltest.Eventually(t, 10*time.Second, "eval never began to wait", func() bool {
		c, err := p.Counts(t.Context())
		return err == nil && c.Waiters == 1
	})
	_ = victim.Process.Signal(syscall.SIGKILL)
	_ = victim.Wait()
	release() // handed to the dead waiter
	handed := time.Now()
	if c, err := p.Counts(t.Context()); err != nil || c.Leased != 1 || c.Waiters != 0 {
		t.Fatalf("counts after the handoff: %+v, %v; want the executor leased to the dead waiter", c, err)
	}
	startWorker(t, srv.URL(), "--reap-interval", reapEvery.String(), "--poll-interval", "50ms")
	bound := ttl + pool.DefaultLeaseGrace + reapEvery
	evaltest.Eventually(t, 3*bound, "the handed executor never came back", func() bool {
		c, err := p.Counts(t.Context())
		return err == nil && c.Available == 1
	})
	back := time.Since(handed)
	t.Logf("executor back %s after it was handed to a dead waiter (TTL %s + grace %s + reap interval %s = %s)", back.Round(time.Millisecond), ttl, pool.DefaultLeaseGrace, reapEvery, bound)
	if back > bound+time.Second {
		t.Errorf("executor back after %s, want within about %s", back, bound)
	}
	if st := servers[0].Stats(); st.Overlaps != 0 {
		t.Fatalf("executor %+v: overlap", st)
	}
}
