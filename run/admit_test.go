package run_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
)

// A normal run that has nothing in flight while a high priority one takes
// the pool gets one eval in flight once it has waited StarveAfter, by
// Redis's clock: a step forward past it starves it at once, and a step
// back (its last admission now dated in the future) must not leave it
// waiting for the clock to catch up.
func TestStarvationByRedisClock(t *testing.T) {
	t.Parallel()
	for _, step := range []time.Duration{run.StarveAfter + time.Second, -time.Hour} {
		t.Run(fmt.Sprint("clock stepped ", step), func(t *testing.T) {
			t.Parallel()
			srv := evaltest.StartT(t, evaltest.Options{SteppableClock: true})
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
			t.Cleanup(func() { _ = rdb.Close() })
			s := run.NewStore(rdb, run.Options{})
			ctx := t.Context()
			admitted := map[string][]string{}
			a := run.Admission{Enqueue: func(_ context.Context, r run.Run, specs []string) error {
				admitted[r.Name] = append(admitted[r.Name], specs...)
				return nil
			}}
			submit := func(name, priority string) {
				t.Helper()
				keys := []string{"1", "2", "3", "4", "5", "6"}
				r := run.Run{Name: name, Pool: "p", CreatedAt: time.Now(), Keys: keys, Priority: priority}
				if err := s.Create(ctx, r); err != nil {
					t.Fatal(err)
				}
				specs := make([][]byte, len(keys))
				for i, key := range keys {
					specs[i] = []byte(name + "/" + key)
				}
				if err := s.Queue(ctx, r, keys, specs); err != nil {
					t.Fatal(err)
				}
			}
			admit := func() {
				t.Helper()
				if _, err := s.Admit(ctx, "p", 1, a); err != nil {
					t.Fatal(err)
				}
			}
			// The normal run takes the pool's two evals in flight, and they
			// end; then the high priority run takes them.
			submit("normal", run.PriorityNormal)
			admit()
			for _, key := range []string{"1", "2"} {
				if _, err := s.Finish(ctx, "normal", run.Record{Key: key, Status: run.Passed}); err != nil {
					t.Fatal(err)
				}
			}
			submit("high", run.PriorityHigh)
			admit()
			if len(admitted["normal"]) != 2 || len(admitted["high"]) != 2 {
				t.Fatalf("admitted %v; want two of each", admitted)
			}
			if err := srv.StepClock(step); err != nil {
				t.Fatal(err)
			}
			admit()
			if len(admitted["normal"]) != 3 {
				t.Errorf("with Redis's clock stepped %s, the normal run has had %d admitted; want one more, for it starves", step, len(admitted["normal"]))
			}
		})
	}
}
