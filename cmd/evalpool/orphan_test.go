//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
)

// groupRuns reports whether a process of group pgid runs (zombies, which
// hold nothing, aside).
func groupRuns(pgid int) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:])
		if len(f) > 2 && string(f[2]) == strconv.Itoa(pgid) && f[0][0] != 'Z' {
			return true
		}
	}
	return false
}

// An executor SIGKILLed mid-eval and started again on its port: the killed
// one's command, and the child it forked, never run beside the next eval.
// The grader holds an exclusive lock on one file while it runs (its child
// inherits it); a grader that finds it taken writes to the overlaps file,
// whatever the executor counts. The restarted executor finds its
// predecessor's state under the default state dir, in TMPDIR.
func TestKilledExecutorLeavesNoGraderBehind(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir) // the executors' os.TempDir(), under the test's
	lock, overlaps, started := filepath.Join(dir, "lock"), filepath.Join(dir, "overlaps"), filepath.Join(dir, "started")
	grader := fmt.Sprintf(`secs=$(cat)
exec 9>>%s
flock -n 9 || echo "$EVALPOOL_EVAL_ID" >> %s
echo "$EVALPOOL_EVAL_ID $(cut -d' ' -f5 /proc/$$/stat)" >> %s
sleep "$secs" & wait
echo '{"status":"passed"}'`, lock, overlaps, started)
	addr := evaltest.FreeAddr(t)
	url := "http://" + addr
	exe := startProc(t, "executor", "executor", "--listen", addr, "--exec", grader)
	c := &executor.Client{}
	healthy := func() bool { return c.Healthy(t.Context(), url) == nil }
	evaltest.Eventually(t, 15*time.Second, "the executor never came up", healthy)

	first := make(chan error, 1)
	go func() {
		_, err := c.Run(context.WithoutCancel(t.Context()), url, executor.Request{EvalID: "first", Fence: 1, Spec: []byte(`60`)})
		first <- err
	}()
	var pgid int
	evaltest.Eventually(t, 10*time.Second, "the first grader never started", func() bool {
		b, _ := os.ReadFile(started)
		_, g, ok := strings.Cut(strings.TrimSpace(string(b)), "first ")
		pgid, _ = strconv.Atoi(g)
		return ok && pgid > 0
	})
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })

	exe.signal(syscall.SIGKILL)
	if err := <-first; err == nil {
		t.Fatal("the first eval passed although its executor was killed")
	}
	exe.start()
	evaltest.Eventually(t, 15*time.Second, "the restarted executor never came up", healthy)
	if groupRuns(pgid) {
		t.Errorf("the killed executor's grader (process group %d) still runs once the restarted one answers /healthz", pgid)
	}
	res, err := c.Run(t.Context(), url, executor.Request{EvalID: "second", Fence: 2, Spec: []byte(`0.2`)})
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("second eval: %+v, %v", res, err)
	}
	if b, err := os.ReadFile(overlaps); len(b) > 0 || !os.IsNotExist(err) {
		t.Fatalf("graders ran at once on one executor: %q found the lock taken", strings.Fields(string(b)))
	}
}

// A state dir the executor cannot use refuses its start, in one line.
func TestExecutorRefusesAnUnusableStateDir(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"executor", "--listen", "127.0.0.1:0", "--exec", "true", "--state-dir", filepath.Join(file, "state")}, &out, &errb)
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if last := lines[len(lines)-1]; code != exitError || !strings.HasPrefix(last, "evalpool: refexec: state dir") || !strings.Contains(last, "not a directory") {
		t.Fatalf("exit %d, stderr %q; want exit %d and a last line saying the state dir is not a directory", code, errb.String(), exitError)
	}
}
