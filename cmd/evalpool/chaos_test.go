//go:build chaos

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
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
	"github.com/evalpool/evalpool/refexec"
	evalrun "github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// chaosPool is one pool of the chaos run: its executors, its evals, and
// its runs, which share it by weight.
type chaosPool struct {
	name      string
	executors []*proc
	urls      []string
	ids       []string
	runs      []string
	runEvals  int
}

// TestChaos runs evals on real processes (Redis with AOF, two pools on it,
// executors that enforce their leases and require a secret, three workers
// each behind a TCP proxy of the test's) while it injects faults on a seeded
// schedule; some evals are longer than the lease, so that a paused or
// partitioned worker runs past it. It then proves that no eval and no
// executor was lost, none was double-booked, and no eval ran on another
// pool's executor. EVALPOOL_CHAOS_SEED replays a run.
func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano() % 100000)
	if s := os.Getenv("EVALPOOL_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d (EVALPOOL_CHAOS_SEED=%d replays it)", seed, seed)
	const (
		leaseTTL  = time.Second
		past      = leaseTTL + pool.DefaultLeaseGrace + time.Second // a pause or a cut past the lease and its grace
		injectFor = 45 * time.Second
		secret    = "chaos-secret-0123456789"
	)

	srv := evaltest.StartT(t, evaltest.Options{Args: []string{"--appendonly", "yes", "--appendfsync", "always"}, SteppableClock: true})
	url := srv.URL()
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer client.Close()
	t.Setenv(executor.EnvSecret, secret) // the executors' and workers' secret

	// Pool b's executors run a command, whose grader holds an exclusive lock
	// of its executor's while it runs (its sleep inherits it): a grader that
	// finds it taken, beside one a killed executor left, notes an overlap
	// whatever the executors count. Their state dirs are under TMPDIR.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	graderOverlaps := filepath.Join(tmp, "grader-overlaps")
	grader := func(lock string) []string {
		return []string{"--exec", fmt.Sprintf(`ms=$(sed -n 's/.*"sleep_ms":\([0-9]*\).*/\1/p')
exec 9>>%s
flock -n 9 || echo "$EVALPOOL_EVAL_ID" >> %s
sleep "$(( ${ms:-30} / 1000 )).$(printf %%03d $(( ${ms:-30} %% 1000 )))" & wait
echo '{"status":"passed"}'`, lock, graderOverlaps)}
	}
	pools := []*chaosPool{{name: "default"}, {name: "b"}}
	for pi, p := range pools {
		for i := range 4 - 2*pi { // 4 executors in default, 2 in b
			addr := evaltest.FreeAddr(t)
			args := []string{"executor", "--listen", addr, "--latency", "30ms", "--fail-rate", "0.1"}
			if p.name == "b" {
				args = append([]string{"executor", "--listen", addr}, grader(filepath.Join(tmp, fmt.Sprintf("lock-%d", i)))...)
			}
			p.executors = append(p.executors, startProc(t, fmt.Sprintf("executor-%s-%d", p.name, i), args...))
			p.urls = append(p.urls, "http://"+addr)
		}
		for _, u := range p.urls {
			evaltest.Eventually(t, 10*time.Second, "executor never came up", func() bool {
				return (&executor.Client{}).Healthy(t.Context(), u) == nil
			})
		}
		if r := runCLI(t, url, p.name, append([]string{"pool", "add"}, p.urls...)...); r.code != 0 {
			t.Fatalf("pool add to %s: %+v", p.name, r)
		}
		// Killed executors are quarantined and probed back, every second.
		if r := runCLI(t, url, p.name, "pool", "config", "--probe-interval", "1s"); r.code != 0 {
			t.Fatalf("pool config of %s: %+v", p.name, r)
		}
	}
	// Other spellings of registered executors, in their pool or the other:
	// one executor is never in a pool twice, nor in two pools.
	port := func(u string) string { _, p, _ := strings.Cut(strings.TrimPrefix(u, "http://"), ":"); return p }
	refused := 0
	for name, spellings := range map[string][]string{
		"default": {"http://localhost:" + port(pools[0].urls[0]), "HTTP://LOCALHOST:0" + port(pools[0].urls[1]) + "/."},
		"b":       {"http://localhost:" + port(pools[0].urls[2])},
	} {
		r := runCLI(t, url, name, append([]string{"pool", "add"}, spellings...)...)
		if r.code != 1 || strings.Count(r.stdout, "duplicate ") != len(spellings) {
			t.Fatalf("pool add of other spellings to %s: %+v; want all %d refused", name, r, len(spellings))
		}
		refused += len(spellings)
	}

	// Each worker reaches Redis through a proxy the test can cut.
	workerArgs := []string{"worker", "--cleanup", "both", "--concurrency", "8", "--lease-ttl", leaseTTL.String(),
		"--reap-interval", "1s", "--poll-interval", "100ms", "--retry-delay", "200ms", "--shutdown-timeout", "2s"}
	var workers []*proc
	var proxies []*evaltest.Proxy
	for i, serves := range []string{"default", "default,b", "b,default"} {
		proxy := evaltest.StartProxy(t, srv.Addr)
		proxies = append(proxies, proxy)
		args := append([]string{"--redis", "redis://" + proxy.Addr + "/0", "--pool", serves}, workerArgs...)
		workers = append(workers, startProc(t, fmt.Sprint("worker-", i), args...))
	}

	// One eval in twenty outlives its lease two times over. Pool default
	// also has three runs of weights 1, 2 and 3 in flight at once, beside
	// its plain evals.
	suite := func(name string, n int) string {
		file := filepath.Join(t.TempDir(), name+".jsonl")
		var lines strings.Builder
		for i := range n {
			sleep := 30
			if rng.IntN(20) == 0 {
				sleep = 2500
			}
			fmt.Fprintf(&lines, `{"eval_id":"%s-%04d","spec":{"sleep_ms":%d}}`+"\n", name, i, sleep)
		}
		if err := os.WriteFile(file, []byte(lines.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return file
	}
	for pi, p := range pools {
		r := runCLI(t, url, p.name, "enqueue", "--file", suite(p.name, []int{400, 200}[pi]), "--max-retry", "10", "--timeout", "30s")
		if r.code != 0 {
			t.Fatalf("enqueue to %s: %+v", p.name, r)
		}
		p.ids = strings.Fields(r.stdout)
	}
	for w := 1; w <= 3; w++ {
		name := fmt.Sprintf("weight%d", w)
		r := runCLI(t, url, pools[0].name, "run", "submit", "--file", suite(name, 200), "--name", name, "--weight", strconv.Itoa(w), "--max-retry", "10", "--timeout", "30s")
		if r.code != 0 {
			t.Fatalf("run submit %s: %+v", name, r)
		}
		pools[0].runs, pools[0].runEvals = append(pools[0].runs, name), pools[0].runEvals+200
	}

	// Counters of executors that get restarted, carried over.
	gone := refexec.Stats{}
	faults := map[string]int{}
	insp := asynq.NewInspectorFromRedisClient(client)
	aq := asynq.NewClientFromRedisClient(client)
	deadline := time.Now().Add(injectFor)
	// Every kind of fault once, in a seeded order, then at random.
	const kinds = 8
	first := rng.Perm(kinds)
	var step time.Duration // how far Redis's clock is off
	for n := 0; time.Now().Before(deadline) || n < len(first); n++ {
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		k := rng.IntN(kinds)
		if n < len(first) {
			k = first[n]
		}
		switch k {
		case 0: // SIGKILL a worker, start a fresh one
			w := workers[rng.IntN(len(workers))]
			w.signal(syscall.SIGKILL)
			w.start()
			faults["worker_kill"]++
		case 1: // a zombie: stopped past its lease and the grace, then woken
			w := workers[rng.IntN(len(workers))]
			w.signal(syscall.SIGSTOP)
			time.Sleep(past)
			w.signal(syscall.SIGCONT)
			faults["worker_stop"]++
		case 2: // a partition: a worker's connections to Redis hang (no reset) past its lease
			p := proxies[rng.IntN(len(proxies))]
			p.Cut()
			time.Sleep(past)
			p.Heal()
			faults["worker_cut"]++
		case 3: // an executor dies (with its command, in pool b) and comes back on its port
			p := pools[rng.IntN(len(pools))]
			i := rng.IntN(len(p.executors))
			if st, err := executorStats(p.urls[i]); err == nil {
				gone.Fenced += st.Fenced
				gone.Overlaps += st.Overlaps
				gone.LeaseExpired += st.LeaseExpired
			}
			p.executors[i].signal(syscall.SIGKILL)
			time.Sleep(300 * time.Millisecond)
			p.executors[i].start()
			if p.name == "b" {
				faults["executor_kill_mid_command"]++
			} else {
				faults["executor_kill"]++
			}
		case 4: // Redis restarts on its AOF, cleanly or not
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
		case 5: // the Redis host's wall clock steps, mostly forward, past the lease and its grace
			d := time.Duration(3000+rng.IntN(5000)) * time.Millisecond
			if rng.IntN(3) == 0 {
				d = -d / 2
			}
			step += d
			if err := srv.StepClock(step); err != nil {
				t.Fatal(err)
			}
			faults["redis_clock_step"]++
		case 6: // Redis full: no write that grows memory goes through for a while
			used := evaltest.Info(t, client, "memory", "used_memory")[0]
			if err := client.ConfigSet(t.Context(), "maxmemory", strconv.FormatFloat(used, 'f', 0, 64)).Err(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
			if err := client.ConfigSet(t.Context(), "maxmemory", "0").Err(); err != nil {
				t.Fatal(err)
			}
			faults["redis_full"]++
		default: // late duplicate cleanups for finished evals, by hand
			q := tasks.Queues(pools[rng.IntN(len(pools))].name).Cleanup
			done, err := insp.ListCompletedTasks(q, asynq.PageSize(20))
			if err != nil || len(done) == 0 {
				continue
			}
			for _, d := range done[:min(3, len(done))] {
				dup := asynq.NewTask(d.Type, d.Payload, asynq.Queue(q), asynq.MaxRetry(tasks.CleanupMaxRetry),
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
	var completed, archived, foreign int
	reasons := map[string]int{}
	for _, p := range pools {
		for _, id := range p.ids {
			for {
				info, err := insp.GetTaskInfo(tasks.Queues(p.name).Evals, id)
				if err == nil && info.State == asynq.TaskStateCompleted {
					completed++
					var res struct{ Executor string }
					if json.Unmarshal(info.Result, &res) != nil || !slices.Contains(p.urls, res.Executor) {
						foreign++
						t.Errorf("eval %s of pool %s ran on %q, not one of its executors", id, p.name, res.Executor)
					}
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
	}

	// Every eval of the runs ends, each once, on its pool's executors.
	runs := evalrun.NewStore(client, evalrun.Options{})
	for _, p := range pools {
		for _, name := range p.runs {
			evaltest.Eventually(t, 6*time.Minute, "run "+name+" never ended", func() bool {
				c, err := runs.Progress(t.Context(), name)
				return err == nil && c.Pending == 0 && c.Running == 0
			})
			_, recs, err := runs.Results(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range recs {
				switch rec.Status {
				case evalrun.Passed, evalrun.Failed:
					completed++
				case evalrun.Errored:
					archived++
					reasons[reason(rec.Error)]++
				default:
					t.Errorf("run %s: eval %s ended %s", name, rec.Key, rec.Status)
				}
				if rec.Executor != "" && !slices.Contains(p.urls, rec.Executor) {
					foreign++
					t.Errorf("eval %s of run %s ran on %q, not one of its pool's executors", rec.Key, name, rec.Executor)
				}
			}
		}
	}

	var doubles, stale, lost, violations, total int64
	overlaps, fenced, expired := gone.Overlaps, gone.Fenced, gone.LeaseExpired
	for _, p := range pools {
		total += int64(len(p.ids) + p.runEvals)
		ps, err := pool.New(client, pool.Options{Name: p.name})
		if err != nil {
			t.Fatal(err)
		}
		// Cleanups may still be on their way: wait for every executor.
		evaltest.Eventually(t, 3*time.Minute, "pool "+p.name+" never whole", func() bool {
			if _, err := ps.Reap(t.Context()); err != nil {
				return false
			}
			c, err := ps.Counts(t.Context())
			return err == nil && c.Available == int64(len(p.urls))
		})
		status, err := ps.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range status.Executors {
			doubles += e.DoubleReleases + e.Duplicates
			stale += e.StaleReleases
		}
		vs, err := ps.Check(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			t.Errorf("pool %s: %s", p.name, v)
		}
		violations += int64(len(vs))
		lost += int64(len(p.urls) - status.Counts[pool.StateAvailable])
		for _, u := range p.urls {
			st, err := executorStats(u)
			if err != nil {
				t.Fatal(err)
			}
			overlaps += st.Overlaps
			fenced += st.Fenced
			expired += st.LeaseExpired
		}
	}

	if b, err := os.ReadFile(graderOverlaps); err == nil {
		n := int64(strings.Count(string(b), "\n"))
		t.Logf("graders that ran beside another on one executor: %d (%s)", n, strings.Fields(string(b)))
		overlaps += n
	}
	line := fmt.Sprintf("chaos seed=%d: evals %d enqueued in 2 pools (600 of them in 3 runs of weights 1, 2, 3), %d completed, %d archived %s, %d on a foreign executor; faults %s; "+
		"spellings refused %d; second and double releases %d absorbed, %d of them stale; fencing rejections %d; leases expired at executors %d; "+
		"overlaps %d; executors lost %d; check violations %d",
		seed, total, completed, archived, formatCounts(reasons), foreign, formatCounts(faults), refused, doubles, stale, fenced, expired,
		overlaps, lost, violations)
	t.Log(line)
	fmt.Println(line)
	if int64(completed+archived) != total {
		t.Errorf("evals lost: %d + %d of %d", completed, archived, total)
	}
	if overlaps != 0 || lost != 0 || violations != 0 || foreign != 0 {
		t.Errorf("the promise broke: overlaps %d, executors lost %d, violations %d, evals on foreign executors %d", overlaps, lost, violations, foreign)
	}
	if doubles == 0 || len(faults) < 5 {
		t.Errorf("the run proves too little: %d double releases, faults %v", doubles, faults)
	}
}

// reason shortens an archived eval's last error to its kind.
func reason(err string) string {
	for _, k := range []string{"simulated failure", "lease lost", "lease expired at the executor", "connection refused", "task lease expired", "deadline", "refused: a newer lease", "refused", "EOF"} {
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
