package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// TestRunRetry retries a run's errored evals, then its failed ones, with
// real executors and a worker: each retry re-runs only those, under the
// same eval IDs, and the run's counts and pass rate follow; an eval whose
// task is gone is refused until the suite is given.
func TestRunRetry(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	url := srv.URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	fixed := filepath.Join(t.TempDir(), "fixed")
	// Until fixed exists, "crash" errors and "wrong" is graded failed.
	grader := evaltest.Grader(t, `spec=$(cat)
if [ ! -e `+fixed+` ]; then
	case "$spec" in
	*crash*) echo 'ValueError: cannot grade' >&2; exit 3 ;;
	*wrong*) echo '{"status":"failed","score":0}'; exit 0 ;;
	esac
fi
echo '{"status":"passed","score":1}'
`)
	_, urls := startExecutors(t, 2, refexec.Options{Exec: grader})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--poll-interval", "20ms")
	suite := writeSuite(t, `{"q":"fine"}`, `{"q":"wrong"}`, `{"q":"crash"}`)
	for _, name := range []string{"r", "g"} {
		if r := cli("run", "submit", "--name", name, "--file", suite, "--max-retry", "0", "--wait"); r.code != 1 {
			t.Fatalf("run submit %s --wait: %+v; want exit 1", name, r)
		}
	}
	status := func(name string) string {
		t.Helper()
		r := cli("run", "status", name)
		if r.code != 0 {
			t.Fatalf("run status: %+v", r)
		}
		return r.stdout
	}
	if r := runCLI(t, url, "default", "run", "retry", "nosuch"); r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "run not found") {
		t.Errorf("retry of an unknown run: %+v; want exit 1, one line", r)
	}
	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		args    []string
		code    int
		printed string
		status  string
	}{
		{[]string{"--errored", "--wait"}, 1, "retried 1 evals of run r (1 errored, 0 failed)", "passed 2, failed 1, errored 0"},
		{[]string{"--failed", "--wait"}, 0, "retried 1 evals of run r (0 errored, 1 failed)", "passed 3, failed 0, errored 0"},
		{nil, 0, "nothing to retry in run r", "passed 3, failed 0, errored 0"},
	}
	for _, tt := range tests {
		r := runCLI(t, url, "default", append([]string{"run", "retry", "r"}, tt.args...)...)
		if r.code != tt.code || !strings.HasPrefix(r.stdout, tt.printed+"\n") {
			t.Fatalf("run retry r %q: %+v; want exit %d, %q", tt.args, r, tt.code, tt.printed)
		}
		if got := status("r"); !strings.Contains(got, "3 of 3 ended: "+tt.status) {
			t.Errorf("after run retry r %q: %s; want %s", tt.args, got, tt.status)
		}
	}
	if r := cli("eval", "status", "r/k3"); r.code != 0 || !strings.Contains(r.stdout, "passed") {
		t.Errorf("eval status r/k3 after its retry: %+v; want it passed under its ID", r)
	}

	// Past its task's retention, an eval's spec is the suite's.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	if err := asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueEvals, "g/k2"); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, url, "default", "run", "retry", "g"); r.code != 1 || !strings.Contains(r.stderr, "1 of its evals") || !strings.Contains(r.stderr, "--file") {
		t.Errorf("retry with a task gone: %+v; want exit 1 naming 1 eval and --file", r)
	}
	if got := status("g"); !strings.Contains(got, "passed 1, failed 1, errored 1") {
		t.Errorf("a refused retry changed the run: %s", got)
	}
	if r := runCLI(t, url, "default", "run", "retry", "g", "--file", suite, "--wait"); r.code != 0 || !strings.HasPrefix(r.stdout, "retried 2 evals of run g (1 errored, 1 failed)\n") {
		t.Errorf("retry --file: %+v", r)
	}
}
