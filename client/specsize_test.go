package client_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// Submit measures a spec as the worker will: 400 KiB of '<' (2.4 MiB in a
// task) refuses the run before anything is written; a spec of just the
// limit in a task goes through, and the worker reads it whole.
func TestSubmitMeasuresSpecsAsTheWorkerDoes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	angles := json.RawMessage(`"` + strings.Repeat("<", 400<<10) + `"`)
	_, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, client.RunRequest{Name: "big", Evals: []tasks.Eval{{Spec: json.RawMessage(`{}`)}, {Spec: angles}}})
	if !errors.Is(err, tasks.ErrBadPayload) || !strings.Contains(err.Error(), "2457602 bytes") {
		t.Fatalf("Submit = %v, want ErrBadPayload for a spec of 2457602 bytes", err)
	}
	if _, err := b.runs.Get(t.Context(), "big"); !errors.Is(err, run.ErrNotFound) {
		t.Fatalf("run big: %v, want run.ErrNotFound", err)
	}
	if queues, err := b.insp.Queues(); err != nil || len(queues) != 0 {
		t.Fatalf("queues %v, %v; want none", queues, err)
	}

	// {"grade":"passed","pad":""} and k '<' of six bytes each, then 'x's.
	const frame = len(`{"grade":"passed","pad":""}`)
	k := (tasks.MaxSpecBytes - frame) / 6
	atLimit := json.RawMessage(`{"grade":"passed","pad":"` + strings.Repeat("<", k) + strings.Repeat("x", tasks.MaxSpecBytes-frame-6*k) + `"}`)
	if _, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, client.RunRequest{Name: "limit", Evals: []tasks.Eval{{Spec: atLimit}}}); err != nil {
		t.Fatalf("Submit of a spec of %d bytes in its task: %v", tasks.MaxSpecBytes, err)
	}
	serve(t, b)
	var got []client.Finished
	if err := client.Wait(t.Context(), b.insp, b.pool.Name(), []string{run.EvalID("limit", "1")}, 10*time.Millisecond, func(f client.Finished) {
		got = append(got, f)
	}, nil); err != nil || len(got) != 1 || got[0].Outcome != client.OutcomePassed {
		t.Fatalf("Wait = %+v, %v; want the eval at the limit passed", got, err)
	}
}
