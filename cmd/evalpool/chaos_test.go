//go:build chaos

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// proc is an evalpool process: this test binary, run as main.
type proc struct {
	t    *testing.T
	name string
	args []string
	cmd  *exec.Cmd
	log  *os.File
}

func startProc(t *testing.T, name string, args ...string) *proc {
	p := &proc{t: t, name: name, args: args}
	p.start()
	t.Cleanup(func() { p.signal(syscall.SIGKILL); _ = p.log.Close() })
	return p
}

func (p *proc) start() {
	var err error
	if p.log == nil {
		if p.log, err = os.Create(filepath.Join(chaosDir(p.t), p.name+".log")); err != nil {
			p.t.Fatal(err)
		}
	}
	p.cmd = exec.Command(os.Args[0], p.args...)
	p.cmd.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
		if sig == syscall.SIGKILL {
			_ = p.cmd.Wait()
		}
	}
}

// chaosDir keeps the processes' logs: EVALPOOL_CHAOS_DIR, or a temp dir.
func chaosDir(t *testing.T) string {
	if d := os.Getenv("EVALPOOL_CHAOS_DIR"); d != "" {
		_ = os.MkdirAll(d, 0o755)
		return d
	}
	return t.TempDir()
}

func executorStats(url string) (executor.Stats, error) {
	var st executor.Stats
	resp, err := http.Get(url + executor.PathStats)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// TestChaos runs 1,000 evals on real processes (Redis with AOF, 4
// executors, 3 workers) while it injects faults on a seeded schedule, then
// proves that no eval and no executor was lost and none was double-booked.
// EVALPOOL_CHAOS_SEED replays a run.
func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano() % 100000)
	if s := os.Getenv("EVALPOOL_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d (EVALPOOL_CHAOS_SEED=%d replays it)", seed, seed)
	const (
		nEvals    = 1000
		nWorkers  = 3
		leaseTTL  = 2 * time.Second
		injectFor = 45 * time.Second
	)

	srv := evaltest.StartT(t, evaltest.Options{Args: []string{"--appendonly", "yes", "--appendfsync", "always"}})
	url := srv.URL()
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer client.Close()
	cli := func(args ...string) result { return evalpool(t, url, "default", args...) }

	var executors []*proc
	var urls []string
	for i := range 4 {
		addr := evaltest.FreeAddr(t)
		executors = append(executors, startProc(t, fmt.Sprint("executor-", i), "executor", "--listen", addr, "--latency", "30ms", "--fail-rate", "0.1"))
		urls = append(urls, "http://"+addr)
	}
	for _, u := range urls {
		evaltest.Eventually(t, 10*time.Second, "executor never came up", func() bool {
			return (&executor.Client{}).Healthy(t.Context(), u) == nil
		})
	}
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	workerArgs := []string{"--redis", url, "worker", "--cleanup", "both", "--concurrency", "8", "--lease-ttl", leaseTTL.String(),
		"--reap-interval", "1s", "--poll-interval", "100ms", "--retry-delay", "200ms", "--shutdown-timeout", "2s"}
	var workers []*proc
	for i := range nWorkers {
		workers = append(workers, startProc(t, fmt.Sprint("worker-", i), workerArgs...))
	}

	r := cli("enqueue", "--spec", `{"task":"chaos"}`, "--count", strconv.Itoa(nEvals), "--max-retry", "10", "--timeout", "30s")
	if r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	ids := strings.Fields(r.stdout)

	// Counters of executors that get restarted, carried over.
	var fencedGone, overlapsGone int64
	faults := map[string]int{}
	insp := asynq.NewInspectorFromRedisClient(client)
	aq := asynq.NewClientFromRedisClient(client)
	deadline := time.Now().Add(injectFor)
	for n := 0; time.Now().Before(deadline); n++ {
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		switch k := rng.IntN(6); k {
		case 0: // SIGKILL a worker, start a fresh one
			w := workers[rng.IntN(len(workers))]
			w.signal(syscall.SIGKILL)
			w.start()
			faults["worker_kill"]++
		case 1: // a zombie: stopped longer than its lease, then woken
			w := workers[rng.IntN(len(workers))]
			w.signal(syscall.SIGSTOP)
			time.Sleep(leaseTTL + time.Second)
			w.signal(syscall.SIGCONT)
			faults["worker_stop"]++
		case 2: // an executor dies and comes back on its port
			i := rng.IntN(len(executors))
			if st, err := executorStats(urls[i]); err == nil {
				fencedGone += st.Fenced
				overlapsGone += st.Overlaps
			}
			executors[i].signal(syscall.SIGKILL)
			time.Sleep(300 * time.Millisecond)
			executors[i].start()
			faults["executor_kill"]++
		case 3: // Redis restarts on its AOF, cleanly or not
			stop, kind := srv.Stop, "redis_term"
			if rng.IntN(2) == 0 {
				stop, kind = srv.Kill, "redis_kill"
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			faults[kind]++
		default: // late duplicate cleanups for finished evals, by hand
			done, err := insp.ListCompletedTasks(tasks.QueueCleanup, asynq.PageSize(20))
			if err != nil || len(done) == 0 {
				continue
			}
			for _, d := range done[:min(3, len(done))] {
				dup := asynq.NewTask(d.Type, d.Payload, asynq.Queue(tasks.QueueCleanup), asynq.MaxRetry(tasks.CleanupMaxRetry),
					asynq.TaskID(fmt.Sprintf("dup-%d-%s", n, d.ID)), asynq.Retention(time.Hour))
				if _, err := aq.Enqueue(dup); err == nil {
					faults["dup_cleanup"]++
				}
			}
		}
	}
	t.Logf("faults injected: %v", faults)

	// Every eval finishes: Asynq recovers a killed worker's tasks a minute
	// or so after their lease lapses.
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	var completed, archived int
	reasons := map[string]int{}
	for _, id := range ids {
		for {
			info, err := insp.GetTaskInfo(tasks.QueueEvals, id)
			if err == nil && info.State == asynq.TaskStateCompleted {
				completed++
				break
			}
			if err == nil && info.State == asynq.TaskStateArchived {
				archived++
				reasons[reason(info.LastErr)]++
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("eval %s never finished: %v %v", id, info, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	evaltest.WaitEvalsDone(t, insp, nEvals, 3*time.Minute)
	if r := cli("pool", "reap"); r.code != 0 {
		t.Fatalf("reap: %+v", r)
	}

	var fenced, overlaps int64 = fencedGone, overlapsGone
	for _, u := range urls {
		st, err := executorStats(u)
		if err != nil {
			t.Fatal(err)
		}
		fenced += st.Fenced
		overlaps += st.Overlaps
	}
	p, err := pool.New(client, pool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	status, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var doubles, stale int64
	for _, e := range status.Executors {
		doubles += e.DoubleReleases
		stale += e.StaleReleases
	}
	violations, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	lost := len(urls) - status.Counts[pool.StateAvailable]

	line := fmt.Sprintf("chaos seed=%d: evals %d enqueued, %d completed, %d archived %s; faults %s; "+
		"double releases %d caught, %d stale refused; fencing rejections %d; overlaps %d; executors lost %d; check violations %d",
		seed, len(ids), completed, archived, formatCounts(reasons), formatCounts(faults), doubles, stale, fenced, overlaps, lost, len(violations))
	t.Log(line)
	fmt.Println(line)
	if completed+archived != nEvals {
		t.Errorf("evals lost: %d + %d of %d", completed, archived, nEvals)
	}
	if overlaps != 0 || lost != 0 || len(violations) != 0 {
		t.Errorf("the promise broke: overlaps %d, executors lost %d, violations %v", overlaps, lost, violations)
	}
	if doubles == 0 || len(faults) < 5 {
		t.Errorf("the run proves too little: %d double releases, faults %v", doubles, faults)
	}
}

// reason shortens an archived eval's last error to its kind.
func reason(err string) string {
	for _, k := range []string{"simulated failure", "lease lost", "connection refused", "task lease expired", "deadline", "refused: a newer lease", "EOF"} {
		if strings.Contains(err, k) {
			return strings.ReplaceAll(k, " ", "_")
		}
	}
	return "other"
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
