package run_test

import (
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
)

// A run written by the release before submission states (its meta has no
// submission or enqueued, and it is in no pool's open index) reads as a
// complete submission, and its ends are recorded and summed as before.
func TestRunOfThePreviousRelease(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	name := evaltest.Pool(t, client)
	k := keys.ForRun(name)
	ctx := t.Context()
	if err := client.HSet(ctx, k.Meta(), "name", name, "pool", "default", "created_at", time.Now().UnixMilli(), "size", 2, "require", "null").Err(); err != nil {
		t.Fatal(err)
	}
	if err := client.RPush(ctx, k.Evals(), "a", "b").Err(); err != nil {
		t.Fatal(err)
	}
	s := run.NewStore(client, run.Options{})
	r, err := s.Get(ctx, name)
	if err != nil || r.Submission != run.Complete || r.Size != 2 {
		t.Fatalf("Get = %+v, %v; want a complete submission of 2", r, err)
	}
	for _, key := range []string{"a", "b"} {
		if _, err := s.Finish(ctx, name, run.Record{Key: key, Status: run.Passed, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := s.Summarize(ctx, name, "")
	if err != nil || sum.Passed != 2 || sum.Submission != run.Complete || sum.PassRate != 1 {
		t.Fatalf("Summarize = %+v, %v", sum, err)
	}
}
