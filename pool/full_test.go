package pool

import (
	"errors"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// TestFullRedis fills a real Redis to its maxmemory (noeviction) with a key
// outside the pool: the reads an operator uses still answer, a lease is
// still released, renewed and reaped, and what would grow memory (acquire,
// register) is refused whole with ErrRedisFull; once memory is freed, the
// pool works again and its invariants hold. The release, renew and reap go
// through a handle made after Redis filled, as a restarted worker's: its
// first change, which migrates first, must not be refused with it.
func TestFullRedis(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: evaltest.FullRedisArgs})
	client := srv.Client(t)
	p := poolOn(t, client, "full")
	register(t, p, "http://e1:1", "http://e2:1", "http://e3:1")
	held := acquire(t, p, "held", time.Minute)
	renewed := acquire(t, p, "renewed", time.Minute)
	expiring := acquire(t, p, "expiring", 100*time.Millisecond)
	free := evaltest.FillRedis(t, client)
	ctx := t.Context()
	restarted, err := New(client, Options{Name: "full"}) // its settings were written before Redis filled
	if err != nil {
		t.Fatal(err)
	}

	if _, err := p.Status(ctx); err != nil {
		t.Errorf("status: %v", err)
	}
	if v, err := p.Check(ctx); err != nil || len(v) > 0 {
		t.Errorf("check: %v, %v", v, err)
	}
	if _, err := p.Counts(ctx); err != nil {
		t.Errorf("counts: %v", err)
	}
	if _, err := p.Acquire(ctx, "new", time.Minute, AcquireArgs{}); !errors.Is(err, ErrRedisFull) {
		t.Errorf("acquire: %v, want ErrRedisFull", err)
	}
	if _, err := p.Register(ctx, Executor{URL: "http://e4:1"}); !errors.Is(err, ErrRedisFull) {
		t.Errorf("register: %v, want ErrRedisFull", err)
	}
	if r, err := restarted.Release(ctx, held, ReleaseArgs{Path: "test"}); err != nil || r.Outcome != Released {
		t.Errorf("release: %+v, %v", r, err)
	}
	if _, err := restarted.Renew(ctx, renewed, time.Minute); err != nil {
		t.Errorf("renew: %v", err)
	}
	waitReclaimable(t, p, expiring)
	if n, err := restarted.Reap(ctx); err != nil || n != 1 {
		t.Errorf("reap: %d, %v; want 1 reclaimed", n, err)
	}
	c, err := p.Counts(ctx)
	if err != nil || c.Available != 2 || c.Leased != 1 {
		t.Errorf("counts at maxmemory after a release and a reap: %+v, %v; want 2 available, 1 leased", c, err)
	}

	free()
	if _, err := p.Acquire(ctx, "new", time.Minute, AcquireArgs{}); err != nil {
		t.Errorf("acquire after memory was freed: %v", err)
	}
	if v, err := p.Check(ctx); err != nil || len(v) > 0 {
		t.Errorf("check after memory was freed: %v, %v", v, err)
	}
}
