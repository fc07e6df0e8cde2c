package executor

import (
	"errors"
	"testing"
)

// FuzzParseResult: any answer is a result with a known status, or
// ErrBadAnswer; never a panic.
func FuzzParseResult(f *testing.F) {
	for _, seed := range []string{
		`{"status":"passed","score":1}`, `{"status":"failed","output":{"log":"x"}}`,
		`{"status":"errored","error":"exit status 3","exit_code":3,"stderr":"Traceback"}`, `{"status":"maybe"}`, `{"status":1}`, `<html>`, ``, `null`, `{"status":"passed","score":"high"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseResult(body)
		if err != nil {
			if !errors.Is(err, ErrBadAnswer) {
				t.Fatalf("error %v is not ErrBadAnswer", err)
			}
			return
		}
		if r.Status != StatusPassed && r.Status != StatusFailed && r.Status != StatusErrored {
			t.Fatalf("accepted status %q", r.Status)
		}
	})
}
