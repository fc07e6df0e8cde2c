package tasks

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParseEval: any bytes on the queue give an eval that passes validation
// and survives a round trip, or ErrBadPayload; never a panic.
func FuzzParseEval(f *testing.F) {
	for _, seed := range []string{
		`{"eval_id":"e1","spec":{"a":1},"timeout_s":60}`,
		`{"eval_id":"e1","spec":[1,2,3],"lease_ttl_ms":30000,"timeout_s":1}`,
		`{"eval_id":"e 1","spec":{},"timeout_s":1}`,
		`{"eval_id":"e1","spec":"x","timeout_s":0}`,
		`{"eval_id":"e1"}`, `{}`, `null`, `[]`, ``, `{"eval_id":"e1","spec":{},"timeout_s":1}{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEval(data)
		if err != nil {
			if !errors.Is(err, ErrBadPayload) {
				t.Fatalf("error %v is not ErrBadPayload", err)
			}
			return
		}
		task, err := NewEval(e, EvalOptions{})
		if err != nil {
			t.Fatalf("a parsed eval does not build: %v", err)
		}
		again, err := ParseEval(task.Payload())
		if err != nil || again.ID != e.ID || !json.Valid(again.Spec) {
			t.Fatalf("round trip: %+v, %v", again, err)
		}
	})
}

// FuzzParseCleanup: a cleanup payload is valid and keeps its task ID, or
// ErrBadPayload.
func FuzzParseCleanup(f *testing.F) {
	for _, seed := range []string{
		`{"eval_id":"e1","url":"http://x","token":"t","fence":3,"path":"success"}`,
		`{"eval_id":"e1","url":"http://x","token":"t","fence":3,"path":"error_handler","error":"boom"}`,
		`{"eval_id":"e1","url":"","token":"t","path":"success"}`,
		`{"eval_id":"e1","url":"http://x","token":"t","path":"elsewhere"}`,
		`{}`, `1`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCleanup(data)
		if err != nil {
			if !errors.Is(err, ErrBadPayload) {
				t.Fatalf("error %v is not ErrBadPayload", err)
			}
			return
		}
		task, err := NewCleanup(TypeCleanupFailure, c)
		if err != nil {
			t.Fatalf("a parsed cleanup does not build: %v", err)
		}
		if again, err := ParseCleanup(task.Payload()); err != nil || again != c {
			t.Fatalf("round trip: %+v, %v", again, err)
		}
	})
}
