package refexec

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
)

// TestGraderContract: a command's result is the file it wrote, else the
// last JSON object line of its stdout, else its whole stdout; the rest is
// log, whose ends go with the result, bounded. A command that fails, runs
// out of time or gives no result makes the eval errored, as a result.
func TestGraderContract(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		exec    string
		tail    int
		timeout time.Duration
		want    executor.Result // Status, Error prefix, ExitCode, Stdout and Stderr substrings
	}{
		{name: "progress before the result", exec: `cat >/dev/null; echo 'progress: 50%'; echo loading >&2; echo '{"status":"passed","score":1}'; echo done`,
			want: executor.Result{Status: executor.StatusPassed, Diagnostics: executor.Diagnostics{Stdout: "progress: 50%\ndone", Stderr: "loading"}}},
		{name: "the last JSON object line wins", exec: `echo '{"status":"passed"}'; echo '[1]'; echo '{"status":"failed"}'`,
			want: executor.Result{Status: executor.StatusFailed, Diagnostics: executor.Diagnostics{Stdout: `{"status":"passed"}`}}},
		{name: "pretty-printed", exec: `printf '{\n  "status": "passed"\n}\n'`,
			want: executor.Result{Status: executor.StatusPassed}},
		{name: "result file", exec: `echo '{"status":"passed"}'; echo '{"status":"failed","score":0}' > "$EVALPOOL_RESULT_FILE"`,
			want: executor.Result{Status: executor.StatusFailed, Diagnostics: executor.Diagnostics{Stdout: `{"status":"passed"}`}}},
		{name: "the grader says errored", exec: `echo '{"status":"errored","error":"the model timed out"}'`,
			want: executor.Result{Status: executor.StatusErrored, Diagnostics: executor.Diagnostics{Error: "the model timed out"}}},
		{name: "crash", exec: `echo 'progress: 10%'; echo 'Traceback: ValueError' >&2; exit 3`,
			want: executor.Result{Status: executor.StatusErrored, Diagnostics: executor.Diagnostics{Error: "exit status 3", ExitCode: new(3), Stdout: "progress: 10%", Stderr: "Traceback: ValueError"}}},
		{name: "no result", exec: `echo 'all good'`,
			want: executor.Result{Status: executor.StatusErrored, Diagnostics: executor.Diagnostics{Error: "no result", Stdout: "all good"}}},
		{name: "not a result", exec: `echo '{"verdict":"yes"}'`,
			want: executor.Result{Status: executor.StatusErrored, Diagnostics: executor.Diagnostics{Error: "its result is not one"}}},
		{name: "out of time", exec: `echo started; sleep 30`, timeout: 2 * time.Second,
			want: executor.Result{Status: executor.StatusErrored, Diagnostics: executor.Diagnostics{Error: "timed out", Stdout: "started"}}},
		{name: "tails bounded", exec: `i=0; while [ $i -lt 300 ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); done; echo '{"status":"passed"}'`, tail: 64,
			want: executor.Result{Status: executor.StatusPassed, Diagnostics: executor.Diagnostics{Stdout: "line 299", Stderr: "err 299"}}},
		{name: "no tails", exec: `echo log; echo err >&2; echo '{"status":"passed"}'`, tail: -1,
			want: executor.Result{Status: executor.StatusPassed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{Exec: tt.exec, Tail: tt.tail})
			ctx := t.Context()
			if tt.timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			res, err := (&executor.Client{}).Run(ctx, url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{"q":1}`), LeaseMs: 60_000})
			w := tt.want
			if err != nil || res.Status != w.Status || !strings.HasPrefix(res.Error, w.Error) ||
				(w.ExitCode == nil) != (res.ExitCode == nil) || w.ExitCode != nil && *w.ExitCode != *res.ExitCode ||
				!strings.Contains(res.Stdout, w.Stdout) || !strings.Contains(res.Stderr, w.Stderr) {
				t.Fatalf("Run = %+v, %v; want %+v", res, err, w)
			}
			if max := max(tt.tail, 0); tt.tail != 0 && (len(res.Stdout) > max || len(res.Stderr) > max) {
				t.Fatalf("tails of %d and %d bytes, want at most %d", len(res.Stdout), len(res.Stderr), max)
			}
			if strings.Contains(res.Stdout, `"status":"`+w.Status+`"`) && w.Status != executor.StatusErrored {
				t.Fatalf("stdout %q holds the result: want the log alone", res.Stdout)
			}
			if w.Status == executor.StatusErrored && s.Stats().Errored != 1 {
				t.Fatalf("stats %+v, want 1 errored", s.Stats())
			}
		})
	}
}
