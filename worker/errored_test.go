package worker

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// An eval whose grader crashes on every attempt, in each cleanup mode: it
// spends its retries, its last attempt's result (exit code, the end of its
// stderr) is kept in its archived task, and its executors count no failure.
func TestErroredEvalKeepsItsResult(t *testing.T) {
	t.Parallel()
	grader := evaltest.Grader(t, `cat >/dev/null; echo 'progress: 10%'; echo 'ValueError: bad input' >&2; exit 3`)
	for _, mode := range []CleanupMode{CleanupOutcome, CleanupInline} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			w, b := setup(t, Config{Cleanup: mode}, refexec.Options{Exec: grader}, refexec.Options{Exec: grader})
			start(t, w)
			ids := enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: 2}, 30*time.Second)
			if _, archived := evaltest.WaitEvalsDone(t, b.insp, 1, 30*time.Second); archived != 1 {
				t.Fatalf("%d archived, want the eval archived", archived)
			}
			info, err := b.insp.GetTaskInfo(tasks.QueueEvals, ids[0])
			if err != nil {
				t.Fatal(err)
			}
			var res tasks.EvalResult
			if err := json.Unmarshal(info.Result, &res); err != nil || res.Status != "errored" || res.ExitCode == nil || *res.ExitCode != 3 ||
				!strings.Contains(res.Stderr, "ValueError: bad input") || !strings.Contains(res.Stdout, "progress: 10%") || res.Attempt != 2 {
				t.Fatalf("result %s, %v; want errored on attempt 2 with exit code 3 and its output", info.Result, err)
			}
			if !strings.Contains(info.LastErr, "errored: exit status 3; stderr ends: ValueError: bad input") {
				t.Fatalf("last error %q", info.LastErr)
			}
			assertPoolWhole(t, b)
			st, _ := b.pool.Status(t.Context())
			for _, e := range st.Executors {
				if e.Fails != 0 {
					t.Errorf("%s: %d failed calls in a row, want none: the eval errored, not the executor", e.URL, e.Fails)
				}
			}
		})
	}
}
