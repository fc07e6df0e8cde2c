package pool

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// waitFor puts evalID in the wait list under a wake key of its own and
// returns the key and the token it waits with.
func waitFor(t *testing.T, p *Pool, evalID string, wantPos int, d time.Duration) (wake, token string) {
	t.Helper()
	wake = p.WakeKey("w-" + evalID)
	l, err := p.Acquire(t.Context(), evalID, time.Minute, AcquireArgs{Wait: Wait{Wake: wake, PlaceTTL: d}})
	if !errors.Is(err, ErrWaiting) || !errors.Is(err, ErrNoExecutor) || l.Token == "" {
		t.Fatalf("%s: Acquire with a wait = %+v, %v; want ErrWaiting with a token", evalID, l, err)
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if pos := waiterPosition(st, evalID); pos != wantPos {
		t.Fatalf("%s is number %d in line, want %d", evalID, pos, wantPos)
	}
	return wake, l.Token
}

func waiterPosition(st *Status, evalID string) int {
	for _, w := range st.Waiters {
		if w.EvalID == evalID {
			return w.Position
		}
	}
	return 0
}

// granted pops the grant pushed to wake and checks it is evalID's, under
// its token, and holds the lease in Redis.
func granted(t *testing.T, p *Pool, wake, evalID, token string) Lease {
	t.Helper()
	msg, err := p.client.RPop(t.Context(), wake).Result()
	if err != nil {
		t.Fatalf("no grant pushed to %s: %v", wake, err)
	}
	l, err := ParseGrant(msg)
	if err != nil || l.EvalID != evalID || l.Token != token {
		t.Fatalf("grant %q = %+v, %v; want %s under its token", msg, l, err, evalID)
	}
	if _, err := p.Renew(t.Context(), l, time.Minute); err != nil {
		t.Fatalf("the granted lease does not hold: %v", err)
	}
	return l
}

// Every path that frees an executor hands it to the oldest live waiter, in
// the same script: release, reclaim, register. A newcomer never jumps the
// line, a lapsed waiter is skipped, and a hand-back keeps its place.
func TestWaitListHandsOffInOrder(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	a := acquire(t, p, "eval-a", time.Minute)
	wakeB, tokB := waitFor(t, p, "eval-b", 1, time.Minute)
	_, _ = waitFor(t, p, "eval-lapsed", 2, time.Millisecond)
	wakeC, tokC := waitFor(t, p, "eval-c", 3, time.Minute)
	// eval-b's next attempt keeps its place, under a new token.
	wakeB, tokB = waitFor(t, p, "eval-b", 1, time.Minute)

	// Release hands to eval-b; a newcomer finds nothing free.
	release(t, p, a, Released)
	lb := granted(t, p, wakeB, "eval-b", tokB)
	if _, err := p.Acquire(t.Context(), "eval-newcomer", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("a newcomer took the executor before the line: %v", err)
	}

	// Reclaim hands to eval-c, skipping the lapsed waiter.
	if _, err := p.Renew(t.Context(), lb, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitReclaimable(t, p, Lease{Deadline: time.Now().Add(10 * time.Millisecond)})
	if n, err := p.Reap(t.Context()); err != nil || n != 1 {
		t.Fatalf("Reap = %d, %v", n, err)
	}
	lc := granted(t, p, wakeC, "eval-c", tokC)

	// Register hands a new executor to the next waiter.
	wakeD, tokD := waitFor(t, p, "eval-d", 1, time.Minute)
	register(t, p, "http://e2")
	ld := granted(t, p, wakeD, "eval-d", tokD)

	release(t, p, lc, Released)
	release(t, p, ld, Released)
	if n, _ := b.client.LLen(t.Context(), wakeB).Result(); n != 0 {
		t.Fatalf("%d grants left on eval-b's wake list", n)
	}
	assertWhole(t, p, "http://e1", "http://e2")
}

// A waiter that leaves never keeps an executor: one handed to it in the race
// goes to the next waiter at once.
func TestLeaveGivesBackAHandedExecutor(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1")
	a := acquire(t, p, "eval-a", time.Minute)
	_, tokB := waitFor(t, p, "eval-b", 1, time.Minute)
	wakeC, tokC := waitFor(t, p, "eval-c", 2, time.Minute)
	release(t, p, a, Released) // handed to eval-b, which is leaving
	if out, _, err := p.Leave(t.Context(), "eval-b", tokB); err != nil || out != ReleasedOnLeave {
		t.Fatalf("Leave = %s, %v; want released", out, err)
	}
	lc := granted(t, p, wakeC, "eval-c", tokC)
	if out, _, err := p.Leave(t.Context(), "eval-b", tokB); err != nil || out != NotWaiting {
		t.Fatalf("second Leave = %s, %v; want none", out, err)
	}
	_, tokD := waitFor(t, p, "eval-d", 1, time.Minute)
	if out, _, err := p.Leave(t.Context(), "eval-d", tokD); err != nil || out != Left {
		t.Fatalf("Leave while waiting = %s, %v; want left", out, err)
	}
	release(t, p, lc, Released)
	assertWhole(t, p, "http://e1")
}

// Check sees a live waiter beside a free executor: a handoff that was missed.
func TestCheckFindsAMissedHandoff(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	l := acquire(t, p, "eval-a", time.Minute)
	waitFor(t, p, "eval-b", 1, time.Minute)
	// By hand, as no script would: the executor back without a handoff.
	if err := writeField(t.Context(), b.client, p.keys, l.URL, "lease", ""); err != nil {
		t.Fatal(err)
	}
	b.client.ZRem(t.Context(), p.keys.Deadlines(), l.URL)
	b.client.HDel(t.Context(), p.keys.Holders(), "eval-a")
	b.client.ZAdd(t.Context(), p.keys.Available(), redisZ(l.URL))
	vs, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Invariant == 6 {
			return
		}
	}
	t.Fatalf("Check = %v; want the live waiter beside a free executor", vs)
}

func redisZ(member string) redis.Z { return redis.Z{Score: 1, Member: member} }
