//go:build unix

package refexec

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"

	"github.com/evalpool/evalpool/executor"
)

// A command that hangs, and its child, are killed at the deadline, a
// little before it so that the eval's errored result reaches the caller.
func TestExecHangIsKilledAtTheDeadline(t *testing.T) {
	t.Parallel()
	pidFile := filepath.Join(t.TempDir(), "pids")
	s, url := setup(t, Options{Exec: "sleep 300 & echo $! >> " + pidFile + "; echo $$ >> " + pidFile + "; wait"})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := (&executor.Client{}).Run(ctx, url, executor.Request{EvalID: "hang", Fence: 1, Spec: []byte(`{}`)})
	if !isDeadline(err) && (err != nil || res.Status != executor.StatusErrored || !strings.HasPrefix(res.Error, "timed out")) {
		t.Fatalf("Run = %+v, %v; want errored for time, or the deadline", res, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("gave up after %s", took)
	}
	evaltest.Eventually(t, 5*time.Second, "the hung command's processes survived", func() bool {
		b, _ := os.ReadFile(pidFile)
		pids := strings.Fields(string(b))
		if len(pids) != 2 {
			return false
		}
		for _, p := range pids {
			pid, _ := strconv.Atoi(p)
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	})
	evaltest.Eventually(t, 5*time.Second, "executor still busy", func() bool { return !s.Stats().Running })
}
