package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/refexec"
)

// A worker calls an executor with the eval's spec, its lease's fence and
// how long the lease holds; the reference executor grades it.
func ExampleClient_Run() {
	srv, err := refexec.New(refexec.Options{})
	if err != nil {
		panic(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()

	c := &executor.Client{}
	res, err := c.Run(context.Background(), ts.URL, executor.Request{
		EvalID:  "eval-42",
		Fence:   7,
		Spec:    json.RawMessage(`{"grade":"failed"}`),
		LeaseMs: (30 * time.Second).Milliseconds(),
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Status, *res.Score)
	// A call under an older fence is refused: a newer lease holds it.
	_, err = c.Run(context.Background(), ts.URL, executor.Request{EvalID: "eval-41", Fence: 6, Spec: json.RawMessage(`{}`)})
	fmt.Println(err != nil)
	// Output:
	// failed 0
	// true
}

// An executor written from the protocol alone: it answers POST /v1/evals
// with a Result, says its time in every answer, and refuses a call whose
// fence is not above the highest it has seen, so that a holder whose lease
// passed to another eval never runs. A real one also checks the
// signature (Verify) when it has a secret, stops an eval when its lease or
// deadline passes, and answers 423 while it runs another.
func Example_executor() {
	var (
		mu       sync.Mutex
		maxFence int64
	)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(executor.TimeHeader, strconv.FormatInt(time.Now().UnixMilli(), 10))
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodPost || r.URL.Path != executor.PathEvals {
			http.NotFound(w, r)
			return
		}
		var req executor.Request
		body, err := executor.ReadBody(r.Body, r.ContentLength, executor.MaxRequestBytes)
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			http.Error(w, `{"error":"malformed request"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		stale := req.Fence <= maxFence
		if !stale {
			maxFence = req.Fence
		}
		seen := maxFence
		mu.Unlock()
		if stale {
			w.WriteHeader(http.StatusConflict)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": "stale fence", "reason": executor.ReasonStaleFence, "max_fence": seen})
			return
		}
		score := 1.0
		_ = json.NewEncoder(w).Encode(executor.Result{Status: executor.StatusPassed, Score: &score})
	})
	ts := httptest.NewServer(handler)
	defer ts.Close()

	c := &executor.Client{}
	res, err := c.Run(context.Background(), ts.URL, executor.Request{EvalID: "eval-1", Fence: 10, Spec: json.RawMessage(`{}`)})
	fmt.Println(res.Status, *res.Score, err)
	_, err = c.Run(context.Background(), ts.URL, executor.Request{EvalID: "eval-0", Fence: 9, Spec: json.RawMessage(`{}`)})
	reason, _ := executor.RefusalReason(err)
	fmt.Println(errors.Is(err, executor.ErrFenced), string(reason))
	// Output:
	// passed 1 <nil>
	// true stale_fence
}
