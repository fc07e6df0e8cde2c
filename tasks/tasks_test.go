package tasks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNewEval(t *testing.T) {
	t.Parallel()
	task, err := NewEval(Eval{ID: "e1", Spec: json.RawMessage(`{"a":1}`)}, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if task.Type() != TypeEval {
		t.Fatalf("type %s", task.Type())
	}
	e, err := ParseEval(task.Payload())
	if err != nil || e.ID != "e1" || e.Timeout() != DefaultTimeout || e.LeaseTTL(time.Second) != time.Second {
		t.Fatalf("round trip: %+v, %v", e, err)
	}
}

// MaxRetry's zero value is the default, so that EvalOptions{} retries;
// none takes a negative value.
func TestRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ maxRetry, want int }{
		{0, DefaultMaxRetry},
		{-1, 0},
		{-100, 0},
		{1, 1},
		{DefaultMaxRetry + 7, DefaultMaxRetry + 7},
	} {
		if got := (EvalOptions{MaxRetry: tc.maxRetry}).retries(); got != tc.want {
			t.Errorf("MaxRetry %d: %d retries, want %d", tc.maxRetry, got, tc.want)
		}
	}
}

func TestBadEvals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		eval Eval
		want string
	}{
		{"empty ID", Eval{Spec: json.RawMessage(`{}`)}, "eval ID is empty"},
		{"space in ID", Eval{ID: "a b", Spec: json.RawMessage(`{}`)}, "spaces or control"},
		{"long ID", Eval{ID: strings.Repeat("x", MaxEvalIDLen+1), Spec: json.RawMessage(`{}`)}, "more than"},
		{"no spec", Eval{ID: "e"}, "spec is missing"},
		{"bad spec", Eval{ID: "e", Spec: json.RawMessage(`{"a":`)}, "not valid JSON"},
		{"huge spec", Eval{ID: "e", Spec: json.RawMessage(`"` + strings.Repeat("x", MaxSpecBytes) + `"`)}, "more than"},
		{"negative TTL", Eval{ID: "e", Spec: json.RawMessage(`{}`), LeaseTTLMs: -5}, "lease TTL"},
		{"tiny TTL", Eval{ID: "e", Spec: json.RawMessage(`{}`), LeaseTTLMs: 5}, "lease TTL"},
		{"negative timeout", Eval{ID: "e", Spec: json.RawMessage(`{}`), TimeoutS: -1}, "timeout"},
		{"non-UTF-8 ID", Eval{ID: "e\xff", Spec: json.RawMessage(`{}`)}, "not valid UTF-8 (byte 2)"},
		{"non-UTF-8 spec", Eval{ID: "e", Spec: json.RawMessage("\"bad\xff\xfe\"")}, "spec: bad payload: not valid UTF-8 (byte 5)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewEval(tt.eval, EvalOptions{})
			if !errors.Is(err, ErrBadPayload) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrBadPayload holding %q", err, tt.want)
			}
		})
	}
}

func TestParseRejectsJunk(t *testing.T) {
	t.Parallel()
	for _, payload := range []string{``, `null`, `[]`, `"x"`, `{"eval_id":"e","spec":{},"timeout_s":1} {}`, `{"eval_id":1}`} {
		if _, err := ParseEval([]byte(payload)); !errors.Is(err, ErrBadPayload) {
			t.Errorf("ParseEval(%q): err = %v, want ErrBadPayload", payload, err)
		}
		if _, err := ParseCleanup([]byte(payload)); !errors.Is(err, ErrBadPayload) {
			t.Errorf("ParseCleanup(%q): err = %v, want ErrBadPayload", payload, err)
		}
	}
}

// TestParseAcceptsNewerPayloads: a producer one version ahead adds fields; a
// worker that refused them would archive every eval of a rolling upgrade.
func TestParseAcceptsNewerPayloads(t *testing.T) {
	t.Parallel()
	e, err := ParseEval([]byte(`{"eval_id":"e","spec":{"k":1},"timeout_s":5,"priority":9,"labels":{"gpu":"a100"}}`))
	if err != nil || e.ID != "e" || e.TimeoutS != 5 || string(e.Spec) != `{"k":1}` {
		t.Fatalf("ParseEval(newer payload) = %+v, %v", e, err)
	}
	c, err := ParseCleanup([]byte(`{"eval_id":"e","url":"http://x","token":"t","path":"success","retries":2}`))
	if err != nil || c.URL != "http://x" || c.Token != "t" {
		t.Fatalf("ParseCleanup(newer payload) = %+v, %v", c, err)
	}
}

func TestCleanupTaskIDs(t *testing.T) {
	t.Parallel()
	c := Cleanup{EvalID: "e", URL: "http://x", Token: "t", Path: PathSuccess}
	a, err := NewCleanup(TypeCleanupSuccess, c)
	if err != nil {
		t.Fatal(err)
	}
	c.Path = PathErrorHandler
	b, err := NewCleanup(TypeCleanupFailure, c)
	if err != nil {
		t.Fatal(err)
	}
	idA, idB := CleanupTaskID(TypeCleanupSuccess, Cleanup{EvalID: "e", Token: "t", Path: PathSuccess}), CleanupTaskID(TypeCleanupFailure, c)
	if idA == idB {
		t.Fatal("two cleanup paths share a task ID: one would swallow the other")
	}
	if a.Type() != TypeCleanupSuccess || b.Type() != TypeCleanupFailure {
		t.Fatal("wrong types")
	}
	if _, err := NewCleanup(TypeEval, c); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("NewCleanup(eval type): %v", err)
	}
	c.Path = "sideways"
	if _, err := NewCleanup(TypeCleanupFailure, c); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("unknown path accepted: %v", err)
	}
}

func TestTimeoutSeconds(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]int64{300 * time.Millisecond: 1, time.Second: 1, 1001 * time.Millisecond: 2, time.Minute: 60} {
		if got := TimeoutSeconds(d); got != want {
			t.Errorf("TimeoutSeconds(%s) = %d, want %d", d, got, want)
		}
	}
}
