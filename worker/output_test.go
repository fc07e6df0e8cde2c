package worker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// TestRunOutputStoredOnce runs evals of a run that answer 20 KB of output
// each, in both cleanup modes: the output is kept once, in the run's
// record, not in the task's result too; the task is kept for the run's
// evals' task retention (an hour), not the week the run is; and the wait
// paths still read the result (client.RunResult).
func TestRunOutputStoredOnce(t *testing.T) {
	t.Parallel()
	const outBytes = 20_000
	grader := filepath.Join(t.TempDir(), "grade.sh")
	script := `cat >/dev/null
printf '{"status":"passed","score":1,"output":{"text":"%s"}}' "$(head -c ` + "20000" + ` /dev/zero | tr '\0' x)"
`
	if err := os.WriteFile(grader, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []CleanupMode{CleanupInline, CleanupOutcome} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			w, b := setup(t, Config{Cleanup: mode}, refexec.Options{Exec: grader})
			start(t, w)
			rdb := w.redis.(*redis.Client)
			store := run.NewStore(rdb, run.Options{})
			ctx := t.Context()
			req := client.RunRequest{Name: "out"}
			for range 3 {
				req.Evals = append(req.Evals, tasks.Eval{Spec: json.RawMessage(`{}`)})
			}
			if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, store, req); err != nil {
				t.Fatal(err)
			}
			evaltest.Eventually(t, 30*time.Second, "the run's evals ended", func() bool {
				c, err := store.Progress(ctx, "out")
				return err == nil && c.Passed == 3
			})
			evaltest.WaitEvalsDone(t, b.insp, 3, 30*time.Second)
			queue := tasks.Queues(b.pool.Name()).Evals
			var taskBytes int64
			for _, key := range []string{"1", "2", "3"} {
				id := run.EvalID("out", key)
				tk := tasks.ResultKey(queue, id)
				taskBytes += rdb.MemoryUsage(ctx, tk, 0).Val()
				// Asynq's completed set is scored by when each task expires.
				expires := time.Unix(int64(rdb.ZScore(ctx, "asynq:{"+queue+"}:completed", id).Val()), 0)
				if kept := time.Until(expires); kept <= 0 || kept > tasks.RunTaskRetention {
					t.Errorf("eval %s: task kept %s more, want at most %s", id, kept, tasks.RunTaskRetention)
				}
				info, err := client.Lookup(b.insp, b.pool.Name(), id)
				if err == nil {
					err = client.RunResult(ctx, store, info)
				}
				var res tasks.EvalResult
				if err != nil || json.Unmarshal(info.Result, &res) != nil || res.Status != run.Passed || len(res.Output) < outBytes {
					t.Errorf("eval %s: result %.80s…, %v; want passed with its output", id, info.Result, err)
				}
			}
			runBytes := rdb.MemoryUsage(ctx, "evalpool:run:{out}:done", 0).Val()
			if total := taskBytes + runBytes; total > 3*outBytes*3/2 {
				t.Errorf("3 outputs of %d bytes take %d bytes (tasks %d, run %d); want each kept once", outBytes, total, taskBytes, runBytes)
			}
			if _, rows, err := store.Results(ctx, "out"); err != nil || !strings.Contains(string(rows[0].Output), "xxxx") {
				t.Errorf("run results: %v", err)
			}
		})
	}
}
