package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	evalrun "github.com/evalpool/evalpool/run"
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
	s.cli = func(args ...string) result { return runCLI(t, s.redis, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{})
	if r := s.cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	if worker {
		startWorker(t, s.redis, "--concurrency", "4", "--poll-interval", "20ms", "--cleanup", "inline")
	}
	s.base = startDashboard(t, s.redis, append([]string{"--", "--auth-token", pyToken}, args...)...)
	s.client = filepath.Join(clientDir, "evalpool_client.py")
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
	// Its stderr is no terminal: lines of progress, as the CLI's, not a
	// bar's \r frames.
	if r := s.py(t, "submit", gradedSuite(t, 6, 7, 8), "--name", "before", "--min-pass-rate", "0"); r.code != 0 || strings.Contains(r.stderr, "\r") || !strings.HasSuffix(r.stderr, "before: 10 of 10 ended\n") {
		t.Fatalf("before: %+v; want lines of progress ending \"before: 10 of 10 ended\", no \\r", r)
	}
	if r := s.py(t, "submit", gradedSuite(t, 1, 7, 8), "--name", "after", "--min-pass-rate", "0"); r.code != 0 {
		t.Fatalf("after: %+v", r)
	}
	py := s.py(t, "summary", "after", "--compare", "before")
	cli := s.cli("run", "summary", "after", "--compare", "before")
	if py.code != 0 || cli.code != 0 {
		t.Fatalf("python %+v\ncli %+v", py, cli)
	}
	// In this order; the pass rate, metric and group changes, from a
	// server that gives them, come between.
	want := []string{"  against before: 1 newly failing, 1 newly passing", "    newly failing k1", "    newly passing k6"}
	got := trimLines(py.stdout)
	for i := 0; i < len(got) && len(want) > 0; i++ {
		if got[i] == want[0] {
			want = want[1:]
		}
	}
	if len(want) > 0 {
		t.Errorf("python summary --compare:\n%s\nlacks, in order:\n%s", py.stdout, strings.Join(want, "\n"))
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
// Ctrl-C; an error, a usage error too, is one line on stderr.
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
		{"no command", nil, 2, "required: command; see evalpool-client --help"},
	} {
		r := s.py(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || strings.Contains(r.stderr, "Traceback") {
			t.Errorf("%s: %+v; want exit %d and %q on stderr", c.name, r, c.code, c.want)
		}
		if c.name != "under --min-pass-rate" && !oneLine(r) {
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
	for !strings.Contains(errb.String(), "stuck: 0 of 10 ended") && time.Now().Before(deadline) {
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

// pyEval runs Python code with the client imported as c (and json, sys)
// on stdin, from the client's directory.
func pyEval(t *testing.T, python, code, stdin string) result {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), python, "-c", "import json, sys, evalpool_client as c; "+code)
	cmd.Dir, cmd.Stdin = clientDir, strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	return runCmd(t, cmd)
}

// clientDir is the Python client's directory in the repository.
var clientDir = filepath.Join("..", "..", "examples", "python")

// TestPythonPrintSummary feeds summaries to the Python client's
// print_summary and to the CLI's printSummary: one with none of the fields
// of metrics, groups, epochs and metadata (an older server's), one with
// all, and each prints the same lines in both.
func TestPythonPrintSummary(t *testing.T) {
	t.Parallel()
	python := lookPython3(t)
	const base = `"name":"r","pool":"default","created_at":"2026-01-02T03:04:05Z","size":30,
		"passed":24,"failed":4,"errored":1,"cancelled":1,"running":0,"pending":0,"pass_rate":0.8275862,
		"duration_p50_seconds":0.5,"duration_p95_seconds":1.25,"retries":2`
	for _, c := range []struct{ name, summary string }{
		{"an older server's", `{` + base + `,"mean_score":0.7123,"median_score":0.75,
			"failures":[{"key":"k3","status":"failed","error":"wrong answer","reason":"wrong answer"},{"key":"k9","status":"errored"}],
			"compare":{"against":"before","newly_failing":["k3"],"newly_passing":[]}}`},
		{"every field", `{` + base + `,"mean_score":0.7123,"median_score":0.75,
			"meta":{"model":"m1","commit":"abc","note":"two words"},"epochs":5,
			"score":{"mean":0.7123,"stderr":0.0312,"n":30},
			"metrics":{"f1":{"mean":0.5,"stderr":0.1,"n":29},"accuracy":{"mean":0.8,"stderr":0.073,"n":30}},
			"groups":[{"group":"math","passed":8,"failed":2,"errored":0,"cancelled":0,"pass_rate":0.8,"score":{"mean":0.1,"stderr":0,"n":1}},
				{"group":"none yet","passed":0,"failed":0,"errored":0,"cancelled":3,"pass_rate":-1}],
			"pass_at_1":0.6333,"pass_at_k":0.9,
			"failures":[{"key":"k3#1","status":"failed","error":"wrong answer","reason":"wrong answer; stderr ends: 4 != 5"}],
			"compare":{"against":"before","newly_failing":["k3#1"],"newly_passing":["k7#2"],
				"pass_rate":{"before":0.8,"after":0.75,"delta":-0.05},
				"metrics":{"accuracy":{"before":0.8,"after":0.75,"delta":-0.05},"f1":{"before":0.4,"after":0.5,"delta":0.1}},
				"groups":[{"group":"math","pass_rate":{"before":0.7,"after":0.8,"delta":0.1}}]}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var sum evalrun.Summary
			if err := json.Unmarshal([]byte(c.summary), &sum); err != nil {
				t.Fatal(err)
			}
			var cli strings.Builder
			printSummary(&cli, sum)
			want := trimLines(cli.String())
			r := pyEval(t, python, "c.print_summary(json.load(sys.stdin))", c.summary)
			if got := trimLines(r.stdout); r.code != 0 || !slices.Equal(got, want) {
				t.Errorf("exit %d, stderr %s; the Python client printed:\n%s\nthe CLI:\n%s", r.code, r.stderr, r.stdout, cli.String())
			}
		})
	}
}

// TestPythonSubmitFlags: submit's flags are POST /runs' fields, each sent
// only when given; a bad value is a usage error (exit 2, one line) and
// nothing is sent. The API is a recorder: what the real one accepts is
// TestPythonPip's.
func TestPythonSubmitFlags(t *testing.T) {
	t.Parallel()
	python := lookPython3(t)
	var (
		mu     sync.Mutex
		bodies []map[string]any
	)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || r.Method != http.MethodPost || r.URL.Path != "/api/v1/runs" {
			t.Errorf("%s %s: %v", r.Method, r.URL.Path, err)
		}
		mu.Lock()
		bodies = append(bodies, body)
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"name":"sent","size":1,"pool":"default"}`)
	}))
	t.Cleanup(api.Close)
	sent := func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		b := bodies
		bodies = nil
		return b
	}
	suite := filepath.Join(t.TempDir(), "suite.jsonl")
	if err := os.WriteFile(suite, []byte(`{"eval_id":"k1","spec":{"task":"add"},"group":"math"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	client := filepath.Join(clientDir, "evalpool_client.py")
	submit := func(args ...string) result {
		cmd := exec.CommandContext(t.Context(), python, append([]string{client, "--url", api.URL, "submit", suite, "--no-wait"}, args...)...)
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
		return runCmd(t, cmd)
	}
	evals := `"evals":[{"eval_id":"k1","spec":{"task":"add"},"group":"math"}]`
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no flag: the server's defaults", nil, `{` + evals + `}`},
		{"every flag", []string{"--name", "n1", "--require", "gpu=a100", "--require", "zone=eu", "--require", "gpu=a100",
			"--timeout", "90", "--max-retry", "0", "--retention", "1h30m", "--resume", "--allow-empty-pool",
			"--meta", "model=m1", "--meta", "commit=abc", "--meta", "note=a=b c", "--epochs", "3",
			"--weight", "3", "--max-executors", "2", "--priority", "high"},
			`{` + evals + `,"name":"n1","require":{"gpu":"a100","zone":"eu"},"timeout_s":90,"max_retry":0,"retention_s":5400,
			"resume":true,"allow_empty_pool":true,"meta":{"model":"m1","commit":"abc","note":"a=b c"},"epochs":3,
			"weight":3,"max_executors":2,"priority":"high"}`},
		{"the bounds", []string{"--timeout", "604800", "--max-retry", "100", "--retention", "8760h", "--epochs", "100"},
			`{` + evals + `,"timeout_s":604800,"max_retry":100,"retention_s":31536000,"epochs":100}`},
		{"a retention in seconds", []string{"--retention", "3600s", "--epochs", "1"}, `{` + evals + `,"retention_s":3600,"epochs":1}`},
	} {
		r := submit(c.args...)
		var want map[string]any
		if err := json.Unmarshal([]byte(c.want), &want); err != nil {
			t.Fatal(err)
		}
		if got := sent(); r.code != 0 || r.stdout != "sent\n" || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
			t.Errorf("%s: %+v; sent %v, want %v", c.name, r, got, want)
		}
	}
	six := []string{}
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		six = append(six, "--require", k+"=1")
	}
	metas := []string{}
	for i := range 33 {
		metas = append(metas, "--meta", fmt.Sprintf("k%d=v", i))
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"a zero timeout", []string{"--timeout", "0"}, "--timeout"},
		{"a timeout as a duration", []string{"--timeout", "90s"}, "--timeout"},
		{"a timeout over a week", []string{"--timeout", "604801"}, "--timeout"},
		{"a negative max retry", []string{"--max-retry", "-1"}, "--max-retry"},
		{"a max retry over 100", []string{"--max-retry", "101"}, "--max-retry"},
		{"a retention without a unit", []string{"--retention", "3600"}, "--retention"},
		{"a zero retention", []string{"--retention", "0s"}, "--retention"},
		{"a retention over a year", []string{"--retention", "8761h"}, "--retention"},
		{"zero epochs", []string{"--epochs", "0"}, "--epochs"},
		{"epochs over 100", []string{"--epochs", "101"}, "--epochs"},
		{"a meta without =", []string{"--meta", "model"}, "--meta"},
		{"a meta key the API refuses", []string{"--meta", "1model=m"}, "--meta"},
		{"a meta key twice", []string{"--meta", "a=1", "--meta", "a=1"}, "--meta a given twice"},
		{"a meta value with a control character", []string{"--meta", "a=x\ty"}, "--meta a"},
		{"a meta value over 512 bytes", []string{"--meta", "a=" + strings.Repeat("é", 257)}, "--meta a"},
		{"33 metas", metas, "--meta"},
		{"a require without =", []string{"--require", "gpu"}, "--require"},
		{"a require key twice", []string{"--require", "gpu=a", "--require", "gpu=b"}, "--require gpu given twice"},
		{"a require value the API refuses", []string{"--require", "gpu=a 100"}, "--require"},
		{"5 requires", six, "at most 4"},
		{"resume without a name", []string{"--resume"}, "--resume"},
	} {
		r := submit(c.args...)
		if r.code != 2 || r.stdout != "" || !strings.HasPrefix(r.stderr, "evalpool: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: %+v; want exit 2 and one line with %q", c.name, r, c.want)
		}
		if got := sent(); len(got) != 0 {
			t.Errorf("%s: sent %v", c.name, got)
		}
	}
}
