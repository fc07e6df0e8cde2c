package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	evalrun "github.com/evalpool/evalpool/run"
)

// graderRun runs a suite of specs as run name through a real `evalpool
// worker` (its default retries) on three reference executors running
// grader, waits up to within for every eval to end, and returns the run's
// records, the executors as the pool sees them and the worker's metrics.
func graderRun(t *testing.T, grader string, specs []string, maxRetry int, within time.Duration) ([]evalrun.Record, []pool.ExecutorStatus, map[string]float64) {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	rdb := srv.Client(t)
	cli := func(args ...string) result { return runCLI(t, srv.URL(), "default", args...) }
	_, urls := startExecutors(t, 3, refexec.Options{Exec: grader})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	logs := startWorker(t, srv.URL(), "--metrics-addr", "127.0.0.1:0")
	file := filepath.Join(t.TempDir(), "suite.jsonl")
	var lines []string
	for i, s := range specs {
		lines = append(lines, fmt.Sprintf(`{"eval_id":"q%02d","spec":%s}`, i, s))
	}
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const name = "grader"
	if r := cli("run", "submit", "--name", name, "--file", file, "--max-retry", fmt.Sprint(maxRetry), "--timeout", "30s"); r.code != 0 {
		t.Fatalf("run submit: %+v", r)
	}
	store := evalrun.NewStore(rdb, evalrun.Options{})
	var c evalrun.Counts
	if !evaltest.Until(within, func() bool {
		c, _ = store.Progress(t.Context(), name)
		return c.Done() == len(specs)
	}) {
		t.Fatalf("after %s the run has not ended: %+v; the worker's last lines:\n%s", within, c, lastLines(logs.String(), 3))
	}
	_, recs, err := store.Results(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(rdb, pool.Options{Name: "default"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return recs, st.Executors, scrape(t, logs)
}

// assertHealthy fails unless no executor was quarantined, none is one
// unavailable call into a streak, and no attempt found one unavailable.
func assertHealthy(t *testing.T, executors []pool.ExecutorStatus, metrics map[string]float64) {
	t.Helper()
	for _, e := range executors {
		if e.Quarantine != nil || e.Fails != 0 {
			t.Errorf("executor %s: quarantine %+v, %d failed calls in a row; want a healthy executor left alone", e.URL, e.Quarantine, e.Fails)
		}
	}
	for k, v := range metrics {
		if strings.HasPrefix(k, "evalpool_executor_verdicts_total,") && strings.Contains(k, "verdict=unavailable") && v > 0 {
			t.Errorf("%s = %v: the grader's doing was counted against its executor", k, v)
		}
	}
}

// Finding 1 of issue 22: a grader that prints a line of progress before
// its JSON result passes on its first attempt, its log kept with the
// result, and no executor is blamed.
func TestNoisyGraderPasses(t *testing.T) {
	t.Parallel()
	grader := evaltest.Grader(t, `cat >/dev/null
echo 'progress: 50%'
echo 'loading the model' >&2
echo '{"status":"passed","score":1}'
`)
	specs := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`, `{"n":4}`, `{"n":5}`, `{"n":6}`}
	recs, executors, metrics := graderRun(t, grader, specs, 3, 20*time.Second)
	for _, rec := range recs {
		b, _ := json.Marshal(rec)
		if rec.Status != evalrun.Passed || rec.Retries != 0 || !strings.Contains(string(b), "progress: 50%") || !strings.Contains(string(b), "loading the model") {
			t.Errorf("eval %s: %s; want passed on its first attempt, its stdout and stderr kept", rec.Key, b)
		}
	}
	assertHealthy(t, executors, metrics)
}

// Finding 2 of issue 22: a grader that crashes (exit 3) on some inputs.
// Those evals end errored, with the exit status and the end of the
// grader's stderr in their result, after their retries, which come within
// seconds; the others pass; and no executor is blamed for the crashes.
func TestCrashingGraderErrsTheEvalNotTheExecutor(t *testing.T) {
	t.Parallel()
	grader := evaltest.Grader(t, `spec=$(cat)
case "$spec" in
*crash*)
	echo 'Traceback (most recent call last):' >&2
	echo "ValueError: cannot grade $spec" >&2
	exit 3 ;;
esac
echo '{"status":"passed","score":1}'
`)
	var specs []string
	for i := range 12 {
		if i%4 == 1 {
			specs = append(specs, fmt.Sprintf(`{"crash":true,"n":%d}`, i))
		} else {
			specs = append(specs, fmt.Sprintf(`{"n":%d}`, i))
		}
	}
	const maxRetry = 2
	start := time.Now()
	recs, executors, metrics := graderRun(t, grader, specs, maxRetry, 30*time.Second)
	t.Logf("the run took %s", time.Since(start).Round(100*time.Millisecond))
	for _, rec := range recs {
		b, _ := json.Marshal(rec)
		crash := strings.Contains(specs[keyIndex(t, rec.Key)], "crash")
		switch {
		case !crash && (rec.Status != evalrun.Passed || rec.Retries != 0):
			t.Errorf("eval %s: %s; want passed on its first attempt", rec.Key, b)
		case crash && (rec.Status != evalrun.Errored || rec.Retries != maxRetry ||
			!strings.Contains(string(b), `"exit_code":3`) || !strings.Contains(string(b), "ValueError: cannot grade") || !strings.Contains(string(b), "Traceback")):
			t.Errorf("eval %s: %s; want errored after %d retries, with exit code 3 and the grader's stderr", rec.Key, b, maxRetry)
		}
	}
	assertHealthy(t, executors, metrics)
}

func keyIndex(t *testing.T, key string) int {
	t.Helper()
	var i int
	if _, err := fmt.Sscanf(key, "q%02d", &i); err != nil {
		t.Fatalf("key %q: %v", key, err)
	}
	return i
}
