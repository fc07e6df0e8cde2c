//go:build bench

package benchmarks

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

const (
	scaleWorkers     = 8
	scaleConcurrency = 32
	scaleExecutors   = 1000
	scaleEvals       = 20_000
)

// scale runs real processes: one executor process serving 1,000 executors,
// 8 worker processes of concurrency 32, and 20,000 evals on one Redis.
func scale(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	bin := buildBinary(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer client.Close()
	if err := client.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	addr := evaltest.FreeAddr(t)
	fleet := exec.Command(bin, "--log-level", "error", "executor", "--listen", addr, "--count", fmt.Sprint(scaleExecutors))
	if err := fleet.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fleet.Process.Kill(); _ = fleet.Wait() }()
	base := "http://" + addr
	evaltest.Eventually(t, 10*time.Second, "executor fleet never came up", func() bool {
		return (&executor.Client{}).Healthy(t.Context(), base+refexec.FleetPath(0)) == nil
	})
	p, err := pool.New(client, pool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	execs := make([]pool.Executor, scaleExecutors)
	for i := range execs {
		execs[i].URL = base + refexec.FleetPath(i)
	}
	if _, err := p.Register(t.Context(), execs...); err != nil {
		t.Fatal(err)
	}
	aq := asynq.NewClientFromRedisClient(client)
	spec := json.RawMessage(`{"task":"scale"}`)
	var next atomic.Int64
	if n, _, err := parallel(8, scaleEvals, 5*time.Minute, func() error {
		task, err := tasks.NewEval(tasks.Eval{ID: fmt.Sprint("scale-", next.Add(1)), Spec: spec, TimeoutS: 300}, tasks.EvalOptions{})
		if err != nil {
			return err
		}
		_, err = aq.Enqueue(task)
		return err
	}); err != nil || n != scaleEvals {
		t.Fatalf("enqueued %d of %d: %v", n, scaleEvals, err)
	}

	cpu0 := evaltest.RedisCPU(t, client)
	start := time.Now()
	var workers []*exec.Cmd
	for range scaleWorkers {
		w := exec.Command(bin, "--redis", srv.URL(), "--log-level", "error", "worker", "--concurrency", fmt.Sprint(scaleConcurrency), "--poll-interval", "100ms")
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		workers = append(workers, w)
	}
	insp := asynq.NewInspectorFromRedisClient(client)
	completed, archived := evaltest.WaitEvalsDone(t, insp, scaleEvals, 10*time.Minute)
	took := time.Since(start)
	cpu := evaltest.RedisCPU(t, client) - cpu0
	for _, w := range workers {
		_ = w.Process.Signal(syscall.SIGTERM)
	}
	for _, w := range workers {
		_ = w.Wait()
	}

	var overlaps int64
	for i := range scaleExecutors {
		resp, err := http.Get(base + refexec.FleetPath(i) + executor.PathStats)
		if err != nil {
			t.Fatal(err)
		}
		var st refexec.Stats
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		overlaps += st.Overlaps
	}
	counts, err := p.Counts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	violations, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(md, "## 5. Scale\n\n%d worker processes × concurrency %d, %s executors served by one `evalpool executor --count %d` process (answering at once), %s evals already enqueued, one Redis, all on this 2-core machine (one run):\n\n",
		scaleWorkers, scaleConcurrency, thousands(scaleExecutors), scaleExecutors, thousands(scaleEvals))
	md.WriteString("| evals/s | wall | Redis CPU (share of one core) | completed | archived | overlaps | executors lost | check violations |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(md, "| %.0f | %s | %.0f%% | %d | %d | %d | %d | %d |\n\n", float64(scaleEvals)/took.Seconds(), took.Round(time.Second),
		100*cpu/took.Seconds(), completed, archived, overlaps, scaleExecutors-int(counts.Available), len(violations))
}
