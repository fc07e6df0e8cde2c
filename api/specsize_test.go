package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/tasks"
)

// The API measures a spec as the worker will: 400 KiB of '<', 2.4 MiB in
// a task, is refused whole (400, nothing enqueued, no run recorded); a spec
// of just the limit in a task is accepted and run.
func TestSpecSizeAsTheWorkerSeesIt(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	angles := `"` + strings.Repeat("<", 400<<10) + `"`
	for _, tc := range []struct{ path, body string }{
		{"/evals", `{"eval_id":"big","spec":` + angles + `}`},
		{"/runs", `{"name":"big","evals":[{"spec":{}},{"spec":` + angles + `}]}`},
	} {
		a := do(t, "POST", b.url+tc.path, tc.body)
		if a.code != 400 || !strings.Contains(a.errMsg(), "spec is 2457602 bytes as its task carries it") || strings.Contains(a.errMsg(), "\n") {
			t.Fatalf("POST %s with 400 KiB of '<': %.300s; want 400 saying the spec is 2457602 bytes", tc.path, a)
		}
	}
	if q, err := b.insp.Queues(); err != nil || len(q) != 0 {
		t.Fatalf("after the refusals: queues %v, %v; want none", q, err)
	}
	if list := decodeAs[RunList](t, do(t, "GET", b.url+"/runs", ""), 200); len(list.Runs) != 0 {
		t.Fatalf("a refused run was recorded: %+v", list.Runs)
	}

	k := (tasks.MaxSpecBytes - 2) / 6
	atLimit := `"` + strings.Repeat("<", k) + strings.Repeat("x", tasks.MaxSpecBytes-2-6*k) + `"`
	decodeAs[EvalCreated](t, do(t, "POST", b.url+"/evals", `{"eval_id":"at-limit","spec":`+atLimit+`,"max_retry":0}`), 201)
	startWorker(t, b, 1)
	var e Eval
	evaltest.Eventually(t, 30*time.Second, "the eval at the limit never completed", func() bool {
		e = decodeAs[Eval](t, do(t, "GET", b.url+"/evals/at-limit", ""), 200)
		return e.State == "completed" || e.State == "archived"
	})
	var res tasks.EvalResult
	if err := json.Unmarshal(e.Result, &res); err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("eval at the limit: %+v, %v; want passed", e, err)
	}
}
