//go:build unix

package refexec

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"

	"github.com/evalpool/evalpool/executor"
)

// startGroup starts a process group as an eval's would be left: a shell
// leading it, and a child that holds on. It is killed when the test ends.
func startGroup(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 300 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL); _ = cmd.Wait() })
	// The child too, before the group is looked at.
	evaltest.Eventually(t, 5*time.Second, "the group's child never started", func() bool {
		out, _ := exec.Command("pgrep", "-g", strconv.Itoa(pgid)).Output()
		return len(strings.Fields(string(out))) == 2
	})
	return pgid
}

// A restarted executor ends the process groups its predecessor noted
// before it serves, and only those: a note whose leader is now another
// process, or that cannot be read, is dropped without a kill.
func TestStateDirEndsWhatAPredecessorLeft(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	left, reused := startGroup(t), startGroup(t)
	id, err := startTime(left)
	if err != nil {
		t.Fatal(err)
	}
	notes := map[string]string{
		strconv.Itoa(left) + groupSuffix:   strconv.Itoa(left) + " " + id + "\n",
		strconv.Itoa(reused) + groupSuffix: strconv.Itoa(reused) + " " + id + "-another-process\n",
		"junk" + groupSuffix:               "not a note",
	}
	for name, note := range notes {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(note), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Exec: "cat >/dev/null; echo '{\"status\":\"passed\"}'", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	url := serveOn(t, s)
	c := &executor.Client{}
	evaltest.Eventually(t, 10*time.Second, "the executor never answered /healthz", func() bool { return c.Healthy(t.Context(), url) == nil })
	if groupRunning(left) {
		t.Errorf("process group %d, noted by the predecessor, still runs once the executor answers /healthz", left)
	}
	if !groupRunning(reused) {
		t.Errorf("process group %d was killed although its leader is not the process noted", reused)
	}
	for name := range notes {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("note %s is still there: %v", name, err)
		}
	}
	// An eval's note lives while its command runs.
	res, err := c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*"+groupSuffix)); len(m) != 0 {
		t.Fatalf("notes left after the eval ended: %v", m)
	}
}

// A state directory the executor cannot use is refused, in one line,
// before anything is served.
func TestStateDirRefused(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	held := t.TempDir()
	first, err := New(Options{Exec: "true", StateDir: held})
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, first)
	evaltest.Eventually(t, 5*time.Second, "the first executor never locked its state dir", func() bool {
		f, err := os.Open(filepath.Join(held, "lock"))
		if err != nil {
			return false
		}
		defer f.Close()
		return syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB) != nil
	})
	for _, tt := range []struct {
		name, dir, want string
	}{
		{"a file", filepath.Join(file, "state"), "not a directory"},
		{"writable by others", open, "no other may write to"},
		{"in use", held, "in use by another executor"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Options{Exec: "true", StateDir: tt.dir})
			if err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err = s.Serve(ctx, l)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Serve = %v, want one line holding %q", err, tt.want)
			}
		})
	}
}
