package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// TestPythonClient runs the standard-library client in examples/python,
// with Debian's python3, against a real dashboard, worker and executors: it
// submits 100 evals, waits, and prints the summary `run summary` prints.
func TestPythonClient(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is not installed; .ci/run installs it")
		}
		t.Skip("python3 is not installed")
	}
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	_, urls := startExecutors(t, 3, refexec.Options{Latency: time.Millisecond, GradeFailRate: 0.2})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--concurrency", "8", "--poll-interval", "20ms", "--cleanup", "inline")
	const token = "test-token-0123456789"
	base := startDashboard(t, url, "--", "--auth-token", token)
	specs := make([]string, 100)
	for i := range specs {
		specs[i] = `{"task":"add"}`
	}
	suite := writeSuite(t, specs...)
	client := filepath.Join(clientDir, "evalpool_client.py")

	py := func(args ...string) (int, string, string) {
		cmd := exec.CommandContext(t.Context(), python, append([]string{client, "--url", base}, args...)...)
		cmd.Env = append(os.Environ(), "EVALPOOL_AUTH_TOKEN="+token, "PYTHONDONTWRITEBYTECODE=1")
		r := runCmd(t, cmd)
		return r.code, r.stdout, r.stderr
	}
	code, out, stderr := py("submit", suite, "--name", "py", "--min-pass-rate", "0.95")
	if code != 1 || !strings.HasPrefix(out, "py\n") || !strings.Contains(stderr, "under the 95.0% required") {
		t.Fatalf("python submit under its pass rate: exit %d\nstdout %s\nstderr %s", code, out, stderr)
	}
	// The summary it printed is the one the CLI prints.
	r := cli("run", "summary", "py")
	counts := regexp.MustCompile(`passed \d+, failed \d+, errored \d+, cancelled \d+, running \d+, pending \d+`)
	rate := regexp.MustCompile(`pass rate [0-9.]+%`)
	for _, re := range []*regexp.Regexp{counts, rate} {
		if got, want := re.FindString(out), re.FindString(r.stdout); got == "" || got != want {
			t.Errorf("python printed %q, the CLI %q", got, want)
		}
	}
	if !strings.Contains(out, "passed ") || strings.Contains(out, "passed 100,") {
		t.Errorf("a fifth graded failed, yet: %s", out)
	}
	// A wrong token is an error, not a summary.
	cmd := exec.CommandContext(t.Context(), python, client, "--url", base, "--token", "wrong", "summary", "py")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "401") {
		t.Errorf("a wrong token: %v, %s", err, b)
	}
}
