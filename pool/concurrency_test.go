package pool

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// interval is one lease as the ledger saw it, in Redis time: from its
// acquire to its release, its re-entry by a newer attempt, or (for a lease
// left to expire) its last deadline.
type interval struct {
	url, eval, token string
	start, end       time.Time
}

// ledger records, from the callers' side, who held what and when. Two leases
// of one executor whose intervals overlap are a double booking.
type ledger struct {
	mu        sync.Mutex
	intervals map[string]*interval // by token
}

func (l *ledger) begin(le Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.intervals[le.Token] = &interval{url: le.URL, eval: le.EvalID, token: le.Token, start: le.AcquiredAt, end: le.Deadline}
}

func (l *ledger) end(token string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.intervals[token].end = at
}

func (l *ledger) overlaps() []string {
	byURL := map[string][]*interval{}
	for _, iv := range l.intervals {
		byURL[iv.url] = append(byURL[iv.url], iv)
	}
	var bad []string
	for url, ivs := range byURL {
		slices.SortFunc(ivs, func(a, b *interval) int { return cmp.Or(a.start.Compare(b.start), a.end.Compare(b.end)) })
		for i := 1; i < len(ivs); i++ {
			if prev, cur := ivs[i-1], ivs[i]; cur.start.Before(prev.end) {
				bad = append(bad, fmt.Sprintf("%s held by %s until %s and by %s from %s",
					url, prev.eval, prev.end.Format(time.StampMilli), cur.eval, cur.start.Format(time.StampMilli)))
			}
		}
	}
	return bad
}

// TestNoDoubleBookingUnderConcurrency runs thousands of random acquires
// (half of them waiting in the wait list for a handoff), renews, releases,
// duplicate and stale releases, expiries, reaps and waiters leaving from 64
// goroutines on a pool of 8, and proves from a ledger kept by the callers
// that no executor was ever held by two evals at once, and that the pool is
// whole at the end.
func TestNoDoubleBookingUnderConcurrency(t *testing.T) {
	t.Parallel()
	const (
		goroutines = 64
		opsEach    = 200
		long       = time.Minute
	)
	urls := make([]string, 8)
	for i := range urls {
		urls[i] = fmt.Sprintf("http://e%d", i)
	}
	p, _ := setup(t, urls...)
	led := &ledger{intervals: map[string]*interval{}}
	var (
		mu    sync.Mutex
		ended []Lease // leases known to be over: released or superseded
		ops   = map[string]int{}
	)
	count := func(op string) {
		mu.Lock()
		ops[op]++
		mu.Unlock()
	}

	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			ctx := t.Context()
			held := map[string]Lease{}     // eval -> live long lease
			waiting := map[string]string{} // eval -> the token it waits with
			wake := p.WakeKey(fmt.Sprint("g", g))
			fail := func(format string, args ...any) {
				errs <- fmt.Errorf("goroutine %d: "+format, append([]any{g}, args...)...)
			}
			// collect takes the grants handed to this goroutine's waiters;
			// the grant of left, which left the line at leftAt, ended then.
			collect := func(left string, leftAt time.Time) bool {
				for {
					msg, err := p.client.RPop(ctx, wake).Result()
					if errors.Is(err, redis.Nil) {
						return true
					}
					if err != nil {
						fail("wake list: %v", err)
						return false
					}
					l, err := ParseGrant(msg)
					if err != nil || waiting[l.EvalID] != l.Token {
						fail("grant %q: %+v, %v; not one of ours", msg, l, err)
						return false
					}
					led.begin(l)
					if l.EvalID == left {
						led.end(l.Token, leftAt)
						count("leave_released")
					} else {
						held[l.EvalID] = l
						count("handoff")
					}
					delete(waiting, l.EvalID)
				}
			}
			// leave takes one waiter out of line; an executor handed to it in
			// the race went back at once.
			leave := func(evalID string) bool {
				out, at, err := p.Leave(ctx, evalID, waiting[evalID])
				if err != nil {
					fail("leave: %v", err)
					return false
				}
				if out != ReleasedOnLeave {
					delete(waiting, evalID)
					count("leave")
					return true
				}
				if !collect(evalID, at) {
					return false
				}
				if _, still := waiting[evalID]; still {
					fail("released on leave, but no grant for %s", evalID)
					return false
				}
				return true
			}
			for i := range opsEach {
				if !collect("", time.Time{}) {
					return
				}
				switch op := rng.IntN(10); {
				case op < 3 || len(held) == 0 && op < 6: // acquire a new eval; one in four is left to expire
					ttl := long
					if rng.IntN(4) == 0 {
						ttl = time.Duration(10+rng.IntN(30)) * time.Millisecond
					}
					id := fmt.Sprintf("g%d-%d", g, i)
					var l Lease
					var err error
					if ttl == long && rng.IntN(2) == 0 {
						l, err = p.Acquire(ctx, id, ttl, AcquireArgs{Wait: Wait{Wake: wake, PlaceTTL: time.Minute}})
						if errors.Is(err, ErrWaiting) {
							waiting[id] = l.Token
							count("wait")
							if rng.IntN(4) == 0 && !leave(id) {
								return
							}
							continue
						}
					} else {
						l, err = p.Acquire(ctx, id, ttl, AcquireArgs{})
					}
					if errors.Is(err, ErrNoExecutor) {
						count("acquire_none")
						continue
					}
					if err != nil {
						fail("acquire: %v", err)
						return
					}
					led.begin(l)
					count("acquire")
					if ttl == long {
						held[l.EvalID] = l
					}
				case op == 3 && len(held) > 0: // a retried attempt re-enters
					old := anyLease(rng, held)
					l, err := p.Acquire(ctx, old.EvalID, long, AcquireArgs{})
					if err != nil || !l.Reentered || l.URL != old.URL {
						fail("re-acquire of live %s: %+v, %v", old.URL, l, err)
						return
					}
					led.end(old.Token, l.AcquiredAt)
					led.begin(l)
					held[l.EvalID] = l
					mu.Lock()
					ended = append(ended, old)
					mu.Unlock()
					count("reenter")
				case op <= 5 && len(held) > 0: // release, and sometimes again
					l := anyLease(rng, held)
					r, err := p.Release(ctx, l, ReleaseArgs{Path: "success"})
					if err != nil || r.Outcome != Released {
						fail("release of live %s: %+v, %v", l.URL, r, err)
						return
					}
					led.end(l.Token, r.At)
					delete(held, l.EvalID)
					mu.Lock()
					ended = append(ended, l)
					mu.Unlock()
					count("release")
					if rng.IntN(2) == 0 {
						r, err := p.Release(ctx, l, ReleaseArgs{Path: "failure", ByCleanup: true})
						// The lease's other path: absorbed, and known as
						// such, never an alert.
						if err != nil || r.Outcome == Released || !r.Duplicate || r.Double {
							fail("duplicate release of %s: %+v, %v", l.URL, r, err)
							return
						}
						count("duplicate")
					}
				case op == 6: // a zombie releases a lease that is long over
					mu.Lock()
					if len(ended) == 0 {
						mu.Unlock()
						continue
					}
					l := ended[rng.IntN(len(ended))]
					mu.Unlock()
					r, err := p.Release(ctx, l, ReleaseArgs{Path: "failure"})
					if err != nil || r.Outcome == Released {
						fail("stale release of %s: %+v, %v", l.URL, r, err)
						return
					}
					count("stale")
				case op <= 8 && len(held) > 0:
					l := anyLease(rng, held)
					nl, err := p.Renew(ctx, l, long)
					if err != nil {
						fail("renew of live %s: %v", l.URL, err)
						return
					}
					led.end(l.Token, nl.Deadline)
					held[l.EvalID] = nl
					count("renew")
				case op == 9:
					if _, err := p.Reap(ctx); err != nil {
						fail("reap: %v", err)
						return
					}
					count("reap")
				}
			}
			for id := range waiting {
				if !leave(id) {
					return
				}
			}
			if !collect("", time.Time{}) {
				return
			}
			for _, l := range held {
				r, err := p.Release(ctx, l, ReleaseArgs{Path: "success"})
				if err != nil || r.Outcome != Released {
					fail("final release of %s: %+v, %v", l.URL, r, err)
					return
				}
				led.end(l.Token, r.At)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("operations: %v", ops)
	for _, op := range []string{"acquire", "acquire_none", "wait", "handoff", "leave", "leave_released", "reenter", "release", "duplicate", "stale", "renew", "reap"} {
		if ops[op] == 0 {
			t.Errorf("the run never did %s: it proves less than it claims", op)
		}
	}
	for _, b := range led.overlaps() {
		t.Errorf("double booking: %s", b)
	}
	evaltest.Eventually(t, 5*time.Second, "short leases never all came back", func() bool {
		_, err := p.Reap(t.Context())
		st, err2 := p.Status(t.Context())
		return err == nil && err2 == nil && st.Counts[StateAvailable] == len(urls)
	})
	assertWhole(t, p, urls...)
}

func anyLease(rng *rand.Rand, held map[string]Lease) Lease {
	ids := make([]string, 0, len(held))
	for id := range held {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return held[ids[rng.IntN(len(ids))]]
}
