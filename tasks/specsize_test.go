package tasks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// A spec is measured as its task carries it, so that a producer refuses
// exactly what a worker would: NewEval accepts a spec if and only if the
// worker accepts the payload it builds.
func TestSpecMeasuredAsTheWorkerSeesIt(t *testing.T) {
	t.Parallel()
	// `"` + k '<' + m 'x' + `"` takes 6k + m + 2 bytes in a payload.
	sized := func(k, m int) string {
		return `"` + strings.Repeat("<", k) + strings.Repeat("x", m) + `"`
	}
	k := (MaxSpecBytes - 2) / 6
	for _, tc := range []struct {
		name, spec string
		size       int
	}{
		{"400 KiB of <", sized(400<<10, 0), 6*(400<<10) + 2},
		{"at the limit", sized(k, MaxSpecBytes-2-6*k), MaxSpecBytes},
		{"a byte over", sized(k, MaxSpecBytes-1-6*k), MaxSpecBytes + 1},
		{"> and &", `{"a":">&"}`, 20},
		{"line separators", "[\"\u2028\u2029\"]", 16},
		{"escapes kept", `"\"<\\"`, 12},
		{"space compacted", " {\n\t\"a b\" : [ 1 , 2 ] }\r\n", 13},
		{"spaced out under the limit", "[" + strings.Repeat(" ", MaxSpecBytes) + "1]", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := encodedSize(json.RawMessage(tc.spec)); got != tc.size {
				t.Fatalf("encodedSize = %d, want %d", got, tc.size)
			}
			task, err := NewEval(Eval{ID: "e", Spec: json.RawMessage(tc.spec)}, EvalOptions{})
			if tc.size > MaxSpecBytes {
				if !errors.Is(err, ErrBadPayload) || !strings.Contains(err.Error(), "more than 1048576") {
					t.Fatalf("NewEval = %v, want ErrBadPayload for a spec of %d bytes", err, tc.size)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewEval = %v", err)
			}
			e, err := ParseEval(task.Payload())
			if err != nil || len(e.Spec) != tc.size {
				t.Fatalf("the worker reads a spec of %d bytes (%v), want %d", len(e.Spec), err, tc.size)
			}
		})
	}
}

// FuzzEncodedSize: for any valid spec, encodedSize is the length of its
// encoding by encoding/json, which writes the payload.
func FuzzEncodedSize(f *testing.F) {
	for _, seed := range []string{`{"a":"<b>&"}`, "\"\u2028\"", `"\\"`, `"\"<"`, " [1, \"\\u003c\" ]\n", `"\xe2\x80"`, `"<\xff>"`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, spec []byte) {
		want, err := json.Marshal(json.RawMessage(spec))
		if err != nil {
			return
		}
		if got := encodedSize(spec); got != len(want) {
			t.Fatalf("encodedSize(%q) = %d, want %d (%q)", spec, got, len(want), want)
		}
	})
}
