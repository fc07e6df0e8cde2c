package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/lua"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// A worker's heartbeat renews the leases of all its running evals in one
// round trip, not one per eval.
func TestHeartbeatRenewsAllLeasesAtOnce(t *testing.T) {
	t.Parallel()
	const evals = 6
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	renews := evaltest.CountScript(client, lua.Renew)
	execs := make([]refexec.Options, evals)
	for i := range execs {
		execs[i].Latency = 5 * time.Second
	}
	w, b := setupOn(t, client, Config{Concurrency: evals, LeaseTTL: time.Second}, execs...)
	start(t, w)
	enqueueEvals(t, b, evals, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, evals, 30*time.Second); completed != evals {
		t.Fatalf("%d of %d evals completed", completed, evals)
	}
	renewed, trips := b.poolMetrics.Renewals("renewed"), float64(renews.N())
	t.Logf("%v lease renewals in %v round trips", renewed, trips)
	// Each eval outlives its 1 s lease five times over: at least 4 renewals.
	// (A shorter lease would be at the mercy of a loaded machine's pauses,
	// now that the executors enforce it.)
	if renewed < evals*4 {
		t.Fatalf("%v lease renewals, want at least %d", renewed, evals*4)
	}
	if trips > renewed/3 {
		t.Fatalf("%v renewals took %v round trips: the heartbeat is not shared", renewed, trips)
	}
	// The executors enforce the lease: they ran evals five times longer than
	// it only because every renewal was passed on to them.
	for i, e := range b.executors {
		if st := e.Stats(); st.LeaseExpired != 0 || st.Extensions < 4 {
			t.Errorf("executor %d: %d extensions, %d leases expired; want at least 4 and none", i, st.Extensions, st.LeaseExpired)
		}
	}
	assertPoolWhole(t, b)
}

// A lease that cannot be renewed before its deadline, here because Redis is
// gone, is lost: its eval is told, since the executor may be someone else's
// by the time Redis is back.
func TestHeartbeatLosesAnUnrenewableLease(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	p, err := pool.New(client, pool.Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Register(t.Context(), pool.Executor{URL: "http://e1"}); err != nil {
		t.Fatal(err)
	}
	const ttl = 300 * time.Millisecond
	lease, err := p.Acquire(t.Context(), "eval-a", ttl, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := evaltest.Logger()
	h := newHeartbeat(p, &executor.Client{}, *logger)
	ctx, lost := context.WithCancelCause(t.Context())
	defer h.stop(h.keep(ctx, lease, ttl, lost))
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * ttl):
		t.Fatal("the lease was never given up")
	}
	// Given up before the lease can end in Redis: Expires is no later than
	// the deadline Redis keeps.
	if cause := context.Cause(ctx); !errors.Is(cause, pool.ErrLeaseLost) || !time.Now().Before(lease.Expires) {
		t.Fatalf("given up %s after it expired with %v, want ErrLeaseLost before", time.Since(lease.Expires), cause)
	}
}
