package refexec

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/evalpool/evalpool/internal/evaltest"

	"github.com/evalpool/evalpool/executor"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func setup(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL
}

func TestSimulatedEval(t *testing.T) {
	t.Parallel()
	s, url := setup(t, Options{})
	c := &executor.Client{}
	res, err := c.Run(t.Context(), url, executor.Request{EvalID: "e1", Fence: 1, Spec: []byte(`{}`)})
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	if err := c.Healthy(t.Context(), url); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Served != 1 || st.Passed != 1 || st.MaxFence != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFencing(t *testing.T) {
	t.Parallel()
	s, url := setup(t, Options{Latency: time.Hour})
	c := &executor.Client{}
	// A slow eval under fence 5; then fence 7 arrives: it preempts 5,
	// whose answer is a 409. Then a zombie with fence 6 is refused.
	var wg sync.WaitGroup
	var oldErr error
	wg.Go(func() {
		_, oldErr = c.Run(t.Context(), url, executor.Request{EvalID: "old", Fence: 5, Spec: []byte(`{}`)})
	})
	evaltest.Eventually(t, 5*time.Second, "fence 5 never started", func() bool { return s.Stats().Running })
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Run(ctx, url, executor.Request{EvalID: "new", Fence: 7, Spec: []byte(`{}`)})
	if !isDeadline(err) {
		t.Fatalf("fence 7: err = %v, want it to run until our deadline", err)
	}
	wg.Wait()
	if !errors.Is(oldErr, executor.ErrFenced) {
		t.Fatalf("preempted fence 5: err = %v, want ErrFenced", oldErr)
	}
	if _, err := c.Run(t.Context(), url, executor.Request{EvalID: "zombie", Fence: 6, Spec: []byte(`{}`)}); !errors.Is(err, executor.ErrFenced) {
		t.Fatalf("fence 6 after 7: err = %v, want ErrFenced", err)
	}
	st := s.Stats()
	if st.Overlaps != 1 || st.Preempted != 1 || st.Fenced != 1 || st.MaxFence != 7 {
		t.Fatalf("stats = %+v, want 1 overlap, 1 preempted, 1 fenced, max fence 7", st)
	}
}

// isDeadline: the caller gave up at its deadline, or the executor, which
// got the same deadline, answered first that it passed.
func isDeadline(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || err != nil && strings.Contains(err.Error(), "504 Gateway Timeout") && strings.Contains(err.Error(), "deadline passed")
}

func TestFailRate(t *testing.T) {
	t.Parallel()
	_, url := setup(t, Options{FailRate: 1})
	_, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
	if err == nil || !strings.Contains(err.Error(), "500 Internal Server Error") || !strings.Contains(err.Error(), "simulated failure") {
		t.Fatalf("err = %v, want a 500 naming the simulated failure", err)
	}
}

func TestExecCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	grader := filepath.Join(dir, "grade.sh")
	script := `#!/bin/sh
# Passes when the spec holds "42", and echoes the eval it graded.
if grep -q 42; then s=passed; else s=failed; fi
printf '{"status":"%s","score":1,"output":{"eval":"%s","fence":%s}}' "$s" "$EVALPOOL_EVAL_ID" "$EVALPOOL_FENCE"
`
	if err := os.WriteFile(grader, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, url := setup(t, Options{Exec: grader})
	c := &executor.Client{}
	for i, tt := range []struct{ spec, want string }{{`{"answer":42}`, executor.StatusPassed}, {`{"answer":41}`, executor.StatusFailed}} {
		spec, want := tt.spec, tt.want
		res, err := c.Run(t.Context(), url, executor.Request{EvalID: "e-" + want, Fence: int64(i + 1), Spec: []byte(spec)})
		if err != nil || res.Status != want || !strings.Contains(string(res.Output), `"eval":"e-`+want) {
			t.Fatalf("spec %s: %+v (output %s), %v; want %s", spec, res, res.Output, err, want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{{Latency: -1}, {FailRate: -0.1}, {FailRate: 1.5}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func TestFleet(t *testing.T) {
	t.Parallel()
	f, err := NewFleet(3, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(f)
	defer ts.Close()
	c := &executor.Client{}
	for i := range 3 {
		if _, err := c.Run(t.Context(), ts.URL+FleetPath(i), executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)}); err != nil {
			t.Fatalf("executor %d: %v", i, err)
		}
	}
	// Each has its own fence: fence 1 again on executor 0 is refused.
	if _, err := c.Run(t.Context(), ts.URL+FleetPath(0), executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)}); !errors.Is(err, executor.ErrFenced) {
		t.Fatalf("stale fence on executor 0: %v", err)
	}
	if st := f.Stats(); st.Served != 3 || st.Fenced != 1 {
		t.Fatalf("fleet stats %+v", st)
	}
	if _, err := NewFleet(0, Options{}); err == nil {
		t.Fatal("empty fleet accepted")
	}
}

// TestFleetStatsSumsEveryCounter: a fleet's stats are its servers' summed,
// every counter of them (a counter added to Stats and not to the sum fails
// here), the highest fence, and running if any runs.
func TestFleetStatsSumsEveryCounter(t *testing.T) {
	t.Parallel()
	f, err := NewFleet(2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range f.Servers {
		v := reflect.ValueOf(&s.stats).Elem()
		for j := range v.NumField() {
			if v.Field(j).Kind() == reflect.Int64 {
				v.Field(j).SetInt(int64(i + 1))
			}
		}
	}
	total := reflect.ValueOf(f.Stats())
	for j := range total.NumField() {
		name, got := total.Type().Field(j).Name, total.Field(j)
		switch {
		case name == "MaxFence":
			if got.Int() != 2 {
				t.Errorf("MaxFence %d, want the highest, 2", got.Int())
			}
		case got.Kind() == reflect.Int64:
			if got.Int() != 3 {
				t.Errorf("%s %d, want the sum, 3", name, got.Int())
			}
		}
	}
}
