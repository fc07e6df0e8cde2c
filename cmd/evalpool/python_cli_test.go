package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// pyStack is a real Redis, dashboard, worker and executors, and the Python
// client in examples/python to talk to the dashboard's API.
type pyStack struct {
	python, client, base, redis string
	cli                         func(args ...string) result
}

const pyToken = "test-token-0123456789"

// lookPython3 is python3, or the test skipped where it is not installed
// (outside CI).
func lookPython3(t *testing.T) string {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is not installed; .ci/run installs it")
		}
		t.Skip("python3 is not installed")
	}
	return python
}

// startPyStack starts the stack; with workers false, no worker serves the
// pool and evals stay pending.
func startPyStack(t *testing.T, worker bool, args ...string) *pyStack {
	t.Helper()
	s := &pyStack{python: lookPython3(t)}
	s.redis = evaltest.StartT(t, evaltest.Options{}).URL()
	s.cli = func(args ...string) result { return evalpool(t, s.redis, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{})
	if r := s.cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	if worker {
		startWorker(t, s.redis, "--concurrency", "4", "--poll-interval", "20ms", "--cleanup", "inline")
	}
	s.base = startDashboard(t, s.redis, append([]string{"--", "--auth-token", pyToken}, args...)...)
	s.client = filepath.Join("..", "..", "examples", "python", "evalpool_client.py")
	return s
}

// command is the Python client's command line against the dashboard.
func (s *pyStack) command(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(t.Context(), s.python, append([]string{s.client, "--url", s.base}, args...)...)
	cmd.Env = append(os.Environ(), "EVALPOOL_AUTH_TOKEN="+pyToken, "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}

// py runs the Python client: its exit code, stdout and stderr.
func (s *pyStack) py(t *testing.T, args ...string) result {
	t.Helper()
	return runCmd(t, s.command(t, args...))
}

func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

// gradedSuite is 10 evals k1..k10, those failing graded failed.
func gradedSuite(t *testing.T, failing ...int) string {
	specs := make([]string, 10)
	for i := range specs {
		g := "passed"
		if slices.Contains(failing, i+1) {
			g = "failed"
		}
		specs[i] = `{"grade":"` + g + `"}`
	}
	return writeSuite(t, specs...)
}

// trimLines is text's lines without their trailing blanks.
func trimLines(text string) []string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return lines
}

// TestPythonCompare: the Python client's summary --compare prints what the
// CLI's run summary --compare prints, newly failing and passing keys too.
func TestPythonCompare(t *testing.T) {
	t.Parallel()
	s := startPyStack(t, true)
	if r := s.py(t, "submit", gradedSuite(t, 6, 7, 8), "--name", "before", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("before: %+v", r)
	}
	if r := s.py(t, "submit", gradedSuite(t, 1, 7, 8), "--name", "after", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("after: %+v", r)
	}
	py := s.py(t, "summary", "after", "--compare", "before")
	cli := s.cli("run", "summary", "after", "--compare", "before")
	if py.code != 0 || cli.code != 0 {
		t.Fatalf("python %+v\ncli %+v", py, cli)
	}
	want := []string{"  against before: 1 newly failing, 1 newly passing", "    newly failing k1", "    newly passing k6"}
	if got := trimLines(py.stdout); len(got) < 3 || !slices.Equal(got[len(got)-3:], want) {
		t.Errorf("python summary --compare ends:\n%s\nwant it to end:\n%s", py.stdout, strings.Join(want, "\n"))
	}
	if got, want := trimLines(py.stdout), trimLines(cli.stdout); !slices.Equal(got, want) {
		t.Errorf("python printed:\n%s\nthe CLI:\n%s", py.stdout, cli.stdout)
	}
}

// TestPythonResults: the Python client's results prints a run's results as
// JSON Lines, the CLI's run results; with --follow, each eval as it ends,
// until the last.
func TestPythonResults(t *testing.T) {
	t.Parallel()
	s := startPyStack(t, true)
	if r := s.py(t, "submit", gradedSuite(t, 2, 3), "--name", "r1", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("submit: %+v", r)
	}
	py, cli := s.py(t, "results", "r1"), s.cli("run", "results", "r1")
	if py.code != 0 || cli.code != 0 {
		t.Fatalf("results: python %+v\ncli %+v", py, cli)
	}
	decode := func(text string) []map[string]any {
		var rows []map[string]any
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			var row map[string]any
			if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
				t.Fatalf("%q: %v", sc.Text(), err)
			}
			rows = append(rows, row)
		}
		return rows
	}
	if got, want := decode(py.stdout), decode(cli.stdout); len(got) != 10 || !reflect.DeepEqual(got, want) {
		t.Errorf("python results:\n%s\nthe CLI's:\n%s", py.stdout, cli.stdout)
	}
	// --follow: submitted without waiting, followed to its last end.
	specs := make([]string, 6)
	for i := range specs {
		specs[i] = `{"sleep_ms":` + []string{"50", "300", "600"}[i%3] + `}`
	}
	if r := s.py(t, "submit", writeSuite(t, specs...), "--name", "r2", "--no-wait"); r.code != 0 {
		t.Fatalf("submit --no-wait: %+v", r)
	}
	f := s.py(t, "results", "r2", "--follow")
	rows := decode(f.stdout)
	var keys []string
	for _, row := range rows {
		if row["status"] != "passed" {
			t.Errorf("followed a line of an eval not ended: %v", row)
		}
		keys = append(keys, row["key"].(string))
	}
	slices.Sort(keys)
	if f.code != 0 || !slices.Equal(keys, []string{"k1", "k2", "k3", "k4", "k5", "k6"}) {
		t.Errorf("results --follow: %+v; keys %v", f, keys)
	}
}

// TestPythonExitCodes: the Python client exits as the CLI does: 1 for an
// error of the API (a conflict, a run not found, an API it cannot reach) or
// a run under its pass rate, 2 for a usage error, 130 for a wait stopped by
// Ctrl-C; an error is one line on stderr.
func TestPythonExitCodes(t *testing.T) {
	t.Parallel()
	s := startPyStack(t, true)
	suite := gradedSuite(t, 4)
	if r := s.py(t, "submit", suite, "--name", "once", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("submit: %+v", r)
	}
	oneLine := func(r result) bool {
		return strings.Count(r.stderr, "\n") == 1 && strings.HasPrefix(r.stderr, "evalpool: ") && !strings.Contains(r.stderr, "Traceback")
	}
	// The CLI's codes where the CLI has the case.
	cliAgain := s.cli("run", "submit", "--file", suite, "--name", "once")
	if cliAgain.code != 1 {
		t.Fatalf("the CLI on a run that exists: %+v", cliAgain)
	}
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"spec\":{}}\n{\"spec\":\"bad\xff\xfe\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a run that exists (409)", []string{"submit", suite, "--name", "once"}, 1, "409"},
		{"a run not found (404)", []string{"summary", "nope"}, 1, "404"},
		{"results of a run not found", []string{"results", "nope"}, 1, "404"},
		{"under --min-pass-rate", []string{"summary", "once", "--min-pass-rate", "0.95"}, 1, "under the 95.0% required"},
		{"not UTF-8", []string{"submit", bad, "--name", "utf"}, 1, bad + ":2:"},
		{"no such file", []string{"submit", bad + ".missing"}, 1, "missing"},
		{"--min-pass-rate over 1", []string{"submit", suite, "--min-pass-rate", "1.5"}, 2, "--min-pass-rate"},
		{"a bad --name", []string{"submit", suite, "--name", "no spaces"}, 2, "--name"},
		{"no command", nil, 2, "usage"},
	} {
		r := s.py(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || strings.Contains(r.stderr, "Traceback") {
			t.Errorf("%s: %+v; want exit %d and %q on stderr", c.name, r, c.code, c.want)
		}
		if c.code == 1 && c.name != "under --min-pass-rate" && !oneLine(r) {
			t.Errorf("%s: stderr %q; want one line", c.name, r.stderr)
		}
	}
	cmd := exec.CommandContext(t.Context(), s.python, s.client, "--url", "http://127.0.0.1:1", "summary", "once")
	if r := runCmd(t, cmd); r.code != 1 || !oneLine(r) || !strings.Contains(r.stderr, "cannot reach") {
		t.Errorf("an API it cannot reach: %+v; want exit 1, one line", r)
	}
}

// TestPythonInterrupt: Ctrl-C stops a wait with exit 130, as the CLI's; the
// evals go on.
func TestPythonInterrupt(t *testing.T) {
	t.Parallel()
	s := startPyStack(t, false) // no worker: the run waits for ever
	cmd := s.command(t, "submit", gradedSuite(t), "--name", "stuck")
	var out bytes.Buffer
	errb := &evaltest.LogBuffer{}
	cmd.Stdout, cmd.Stderr = &out, errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(errb.String(), "0/10") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code != 130 || !strings.Contains(errb.String(), "stopped waiting") || strings.Contains(errb.String(), "Traceback") {
		t.Errorf("Ctrl-C: exit %d (%v); stderr %s", code, err, errb.String())
	}
	if r := s.cli("run", "status", "stuck"); r.code != 0 || !strings.Contains(r.stdout, "pending 10") {
		t.Errorf("the run after Ctrl-C: %+v", r)
	}
}
