package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// startExecutors serves n reference executors over loopback HTTP.
func startExecutors(t *testing.T, n int, opts refexec.Options) ([]*refexec.Server, []string) {
	t.Helper()
	var servers []*refexec.Server
	var urls []string
	for range n {
		s, err := refexec.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(s)
		t.Cleanup(ts.Close)
		servers, urls = append(servers, s), append(urls, ts.URL)
	}
	return servers, urls
}

// startWorker runs `evalpool worker` in-process until the test ends and
// returns its log.
func startWorker(t *testing.T, redisURL string, args ...string) *evaltest.LogBuffer {
	t.Helper()
	logs := &evaltest.LogBuffer{}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan int, 1)
	full := append([]string{"--redis", redisURL, "worker"}, args...)
	go func() { done <- run(ctx, full, &bytes.Buffer{}, logs) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("worker exited %d: %s", code, lastLines(logs.String(), 5))
		}
	})
	return logs
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

var metricsAddr = regexp.MustCompile(`"addr":"([^"]+)"[^}]*"message":"metrics at /metrics"`)

// scrape reads a worker's /metrics with the Prometheus text parser.
func scrape(t *testing.T, logs *evaltest.LogBuffer) map[string]float64 {
	t.Helper()
	var addr string
	evaltest.Eventually(t, 5*time.Second, "worker never logged its metrics address", func() bool {
		m := metricsAddr.FindStringSubmatch(logs.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += fmt.Sprintf(",%s=%s", l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// The main job end to end through the CLI: 3 executors failing 20% of
// evals, one worker with both cleanups, 300 evals.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	servers, urls := startExecutors(t, 3, refexec.Options{Latency: 2 * time.Millisecond, FailRate: 0.2})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	// The executors fail a fifth of their calls at random, with a 500: they
	// are not dead, so no quarantine here (TestDeadExecutorIsQuarantined).
	if r := cli("pool", "config", "--quarantine-after", "0"); r.code != 0 {
		t.Fatalf("pool config: %+v", r)
	}
	logs := startWorker(t, url, "--cleanup", "both", "--concurrency", "8", "--poll-interval", "20ms",
		"--retry-delay", "10ms", "--reap-interval", "1s", "--metrics-addr", "127.0.0.1:0")

	r := cli("enqueue", "--spec", `{"task":"add","a":2,"b":2}`, "--count", "300", "--max-retry", "2", "--timeout", "30s")
	if r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	ids := strings.Fields(r.stdout)
	if len(ids) != 300 {
		t.Fatalf("enqueue printed %d IDs, want 300", len(ids))
	}
	r = cli(append([]string{"eval", "wait"}, ids...)...)
	if r.code != 0 && r.code != 1 || !strings.Contains(r.stderr, "300 evals:") {
		t.Fatalf("eval wait: %+v", r)
	}

	var completed, archived int
	for _, id := range ids {
		r := cli("eval", "result", id)
		switch r.code {
		case 0:
			var res struct{ EvalID, Status string }
			if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || !strings.Contains(r.stdout, `"eval_id":"`+id+`"`) || !strings.Contains(r.stdout, `"status":"passed"`) {
				t.Fatalf("eval result %s: %q, %v", id, r.stdout, err)
			}
			completed++
		case 1:
			if !strings.Contains(r.stderr, "simulated failure") {
				t.Fatalf("failed eval %s: %q, want its error", id, r.stderr)
			}
			archived++
		default:
			t.Fatalf("eval result %s: %+v", id, r)
		}
	}
	t.Logf("completed %d, archived %d", completed, archived)

	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
	r = cli("pool", "status", "--json")
	if !strings.Contains(r.stdout, `"available": 3`) {
		t.Fatalf("pool status: %s", r.stdout)
	}
	for i, s := range servers {
		if st := s.Stats(); st.Overlaps != 0 {
			t.Errorf("executor %s: %d overlaps", urls[i], st.Overlaps)
		}
	}
	m := scrape(t, logs)
	var doubles, duplicates, freed float64
	for k, v := range m {
		switch {
		case strings.HasPrefix(k, "evalpool_double_release_total,"):
			doubles += v
		case strings.HasPrefix(k, "evalpool_release_total,outcome=duplicate"):
			duplicates += v
		case strings.HasPrefix(k, "evalpool_release_total,outcome=released"):
			freed += v
		}
	}
	// Both cleanups of every lease: the second is a known duplicate, and a
	// healthy run raises no double-release alert.
	if duplicates == 0 || doubles != 0 || strings.Contains(logs.String(), "double release detected") {
		t.Fatalf("duplicate releases %v, double releases %v: want some duplicates and no double release in a healthy run", duplicates, doubles)
	}
	// One release per lease taken, straight or handed over from the wait
	// list (a retry that re-entered its live lease took none; no lease
	// expired): a double release that freed a lease would show as a second
	// "released".
	taken := m["evalpool_acquire_total,outcome=acquired,pool=default"] + m["evalpool_executor_wait_seconds,pool=default"]
	if freed != taken || taken < 300 {
		t.Fatalf("%v releases freed an executor for %v leases taken", freed, taken)
	}
	for _, k := range []string{
		"evalpool_executors,pool=default,state=available",
		"evalpool_eval_duration_seconds,outcome=passed,pool=default",
		"evalpool_cleanup_enqueued_total,path=success,pool=default,result=enqueued",
		"asynq_tasks_processed_total,queue=evals",
		"asynq_tasks_enqueued_total,queue=evals,state=completed",
	} {
		if m[k] == 0 {
			t.Errorf("/metrics lacks %s (or it is 0)", k)
		}
	}
	if m["evalpool_executors,pool=default,state=available"] != 3 {
		t.Errorf("gauge of available executors = %v, want 3", m["evalpool_executors,pool=default,state=available"])
	}
}

// A worker process killed with SIGKILL in the middle of an eval: a second
// worker finishes the eval after Asynq recovers the task (about a minute:
// Asynq's task lease is 30 s, recovered 30 s after it lapses), the first
// lease is reclaimed by the reaper, and the executor never runs two evals.
func TestWorkerKilledMidEval(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	servers, urls := startExecutors(t, 1, refexec.Options{Latency: 2 * time.Second})
	cli("pool", "add", urls[0])

	cmd := exec.Command(os.Args[0], "--redis", url, "worker", "--lease-ttl", "1s", "--poll-interval", "50ms", "--reap-interval", "1s")
	cmd.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	go func() { // drain the victim's log
		s := bufio.NewScanner(stderr)
		for s.Scan() {
		}
	}()

	r := cli("enqueue", "--spec", `{}`, "--max-retry", "0", "--timeout", "5m")
	id := strings.TrimSpace(r.stdout)
	evaltest.Eventually(t, 10*time.Second, "eval never reached the executor", func() bool { return servers[0].Stats().Running })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()

	logs := startWorker(t, url, "--lease-ttl", "1s", "--poll-interval", "50ms", "--reap-interval", "1s", "--retry-delay", "10ms")
	evaltest.Eventually(t, 10*time.Second, "the dead worker's lease was never reaped", func() bool {
		return strings.Contains(logs.String(), `"reclaimed":1`)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"--redis", url, "eval", "wait", id}, &out, &errb); code != 0 {
		r := result{code, out.String(), errb.String()}
		t.Fatalf("eval %s never finished after the kill: %+v", id, r)
	}
	if r := cli("eval", "result", id); r.code != 0 || !strings.Contains(r.stdout, `"status":"passed"`) {
		t.Fatalf("eval result: %+v", r)
	}
	t.Logf("eval finished %s after its worker was killed", time.Since(killed).Round(time.Second))
	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
	if st := servers[0].Stats(); st.Overlaps != 0 {
		t.Fatalf("executor stats %+v: overlap", st)
	}
}

// SIGTERM lets the running eval finish, then the worker exits 0 and the
// pool is whole.
func TestWorkerStopsGracefully(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	servers, urls := startExecutors(t, 1, refexec.Options{Latency: time.Second})
	cli("pool", "add", urls[0])
	cmd := exec.Command(os.Args[0], "--redis", url, "worker", "--poll-interval", "50ms")
	cmd.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
	logs := &evaltest.LogBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	id := strings.TrimSpace(cli("enqueue", "--spec", `{}`, "--max-retry", "0").stdout)
	evaltest.Eventually(t, 10*time.Second, "eval never reached the executor", func() bool { return servers[0].Stats().Running })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker exit: %v; log: %s", err, lastLines(logs.String(), 5))
	}
	if !strings.Contains(logs.String(), "worker stopped") {
		t.Fatalf("no clean stop in the log: %s", lastLines(logs.String(), 5))
	}
	if r := cli("eval", "result", id); r.code != 0 || !strings.Contains(r.stdout, `"status":"passed"`) {
		t.Fatalf("the in-flight eval did not finish: %+v", r)
	}
	// Its cleanup was enqueued before the worker stopped; the next worker
	// runs it and the pool is whole.
	startWorker(t, url, "--poll-interval", "50ms")
	evaltest.Eventually(t, 10*time.Second, "executor never came back", func() bool {
		r := cli("pool", "status", "--json")
		return strings.Contains(r.stdout, `"available": 1`)
	})
	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
}

// `evalpool demo` with no --redis: the zero-setup path of `make demo`.
func TestDemoCommand(t *testing.T) {
	t.Setenv("EVALPOOL_REDIS_URL", "") // not parallel: it sets the environment
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"demo", "--evals", "60", "--executors", "3"}, &out, &errb)
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout: %s\nstderr: %s", code, out.String(), lastLines(errb.String(), 5))
	}
	for _, want := range []string{"embedded Redis", "executors lost:   0", "pool check:       ok", "overlaps:         0", "0 freed an executor"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo report lacks %q:\n%s", want, out.String())
		}
	}
	// Its stderr is no terminal: lines of progress, not a bar's \r frames.
	if !strings.HasSuffix(errb.String(), "evals: 60 of 60 ended\n") || strings.Contains(errb.String(), "\r") {
		t.Errorf("stderr %q; want lines of progress ending \"evals: 60 of 60 ended\", no \\r", lastLines(errb.String(), 2))
	}
}
