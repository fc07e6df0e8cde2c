package run

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestRecordReason(t *testing.T) {
	three := 3
	long := strings.Repeat("x", 500)
	tests := []struct {
		name string
		rec  Record
		want string
	}{
		{"passed says nothing", Record{Status: Passed, Output: json.RawMessage(`{"a":1}`)}, ""},
		{"error", Record{Status: Errored, Error: "grader timed out"}, "grader timed out"},
		{"error and stderr", Record{Status: Errored, Error: "exit status 3", Stderr: "Traceback\nValueError: bad\n"}, "exit status 3; stderr ends: ValueError: bad"},
		{"error that quotes stderr", Record{Status: Errored, Error: "exit status 3; stderr ends: ValueError: bad", Stderr: "ValueError: bad\n"}, "exit status 3; stderr ends: ValueError: bad"},
		{"exit code and stderr", Record{Status: Failed, ExitCode: &three, Stderr: "loading\nwrong answer: 41\n\n"}, "exit code 3: wrong answer: 41"},
		{"output", Record{Status: Failed, Output: json.RawMessage("{\"got\": 41,\n \"want\": 42}")}, `output {"got":41,"want":42}`},
		{"stderr only", Record{Status: Failed, Stderr: "expected 42\n"}, "expected 42"},
		{"nothing", Record{Status: Failed}, ""},
		{"long", Record{Status: Failed, Error: long}, strings.Repeat("x", MaxReason-1) + "…"},
	}
	for _, tt := range tests {
		if got := tt.rec.Reason(); got != tt.want {
			t.Errorf("%s: Reason() = %q, want %q", tt.name, got, tt.want)
		}
	}
}
