package executor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
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
