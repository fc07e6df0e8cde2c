package api

import (
	"net/http"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
)

// TestRetryRun retries a run's failed evals over HTTP, with a real worker:
// the answer says how many by status, the run reads as not ended until
// they end again, under the same IDs; nothing errored is nothing retried;
// an unknown run is a 404, a bad body a 400.
func TestRetryRun(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	base := b.url
	body := `{"name":"rt","max_retry":0,"evals":[
		{"eval_id":"p","spec":{"grade":"passed"}},
		{"eval_id":"f","spec":{"grade":"failed"}},
		{"eval_id":"g","spec":{"grade":"failed"}}]}`
	decodeAs[RunCreated](t, do(t, "POST", base+"/runs", body), http.StatusCreated)
	startWorker(t, b, 2)
	progress := func() run.Counts {
		t.Helper()
		return decodeAs[run.Counts](t, do(t, "GET", base+"/runs/rt/progress", ""), http.StatusOK)
	}
	evaltest.Eventually(t, 10*time.Second, "run rt ended", func() bool { return progress().Done() == 3 })

	tests := []struct {
		body string
		want RetryAnswer
	}{
		{`{"failed":true}`, RetryAnswer{Name: "rt", Retried: 2, Failed: 2}},
		{`{"errored":true}`, RetryAnswer{Name: "rt"}},
		{``, RetryAnswer{Name: "rt", Retried: 2, Failed: 2}},
	}
	logged := int64(3)
	for _, tt := range tests {
		got := decodeAs[RetryAnswer](t, do(t, "POST", base+"/runs/rt/retry", tt.body), http.StatusOK)
		if got != tt.want {
			t.Fatalf("retry %s: %+v, want %+v", tt.body, got, tt.want)
		}
		// They ran again: each end is logged once more.
		logged += int64(tt.want.Retried)
		evaltest.Eventually(t, 10*time.Second, "retried evals ended again", func() bool {
			c := progress()
			return c.Done() == 3 && c.Passed == 1 && c.Failed == 2 && b.client.LLen(t.Context(), keys.ForRun("rt").Ended()).Val() == logged
		})
	}
	for _, tt := range []struct {
		path, body string
		code       int
	}{
		{"/runs/nosuch/retry", `{}`, http.StatusNotFound},
		{"/runs/rt/retry", `{"passed":true}`, http.StatusBadRequest},
		{"/runs/rt/retry", `{"failed":"yes"}`, http.StatusBadRequest},
	} {
		if a := do(t, "POST", base+tt.path, tt.body); a.code != tt.code || a.errMsg() == "" {
			t.Errorf("POST %s %s: %s, want %d with an error", tt.path, tt.body, a, tt.code)
		}
	}
}

// TestFollowRetriedRun follows a run whose evals were all retried and
// ended again: a page of the log may hold only old ends, skipped, and the
// follower reads on past it, each eval's latest end once.
func TestFollowRetriedRun(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	b.handler.follows.page = 2
	base := b.url
	body := `{"name":"fr","max_retry":0,"evals":[
		{"eval_id":"a","spec":{"grade":"failed"}},
		{"eval_id":"b","spec":{"grade":"failed"}},
		{"eval_id":"c","spec":{"grade":"failed"}}]}`
	decodeAs[RunCreated](t, do(t, "POST", base+"/runs", body), http.StatusCreated)
	startWorker(t, b, 1)
	k := keys.ForRun("fr")
	ended := func(n int64) func() bool {
		return func() bool { return b.client.LLen(t.Context(), k.Ended()).Val() == n }
	}
	evaltest.Eventually(t, 10*time.Second, "run fr ended", ended(3))
	if got := decodeAs[RetryAnswer](t, do(t, "POST", base+"/runs/fr/retry", `{"failed":true}`), http.StatusOK); got.Retried != 3 {
		t.Fatalf("retry: %+v", got)
	}
	evaltest.Eventually(t, 10*time.Second, "run fr ended again", ended(6))
	resp, err := http.Get(base + "/runs/fr/results?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	seen := map[string]int{}
	readLines(t, resp.Body, func(l ResultLine) { seen[l.EvalID]++ })
	if len(seen) != 3 || seen["fr/a"] != 1 || seen["fr/b"] != 1 || seen["fr/c"] != 1 {
		t.Errorf("followed %v, want each eval's end once", seen)
	}
}
