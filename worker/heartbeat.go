package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/pool"
)

// heartbeat keeps the leases of all of a worker's running evals on one pool
// alive with one round trip per beat (Pool.RenewAll), where a heartbeat per
// eval costs a round trip per lease: a worker with hundreds of long evals in
// flight sends a couple of renewals per lease interval, not hundreds. Its
// goroutine runs only while some eval holds a lease.
//
// Time left on a lease is measured from Redis's answers on this process's
// monotonic clock (pool.Lease.Expires), never by comparing clocks. A lease
// is extended at its executor only after Redis renewed it, so that a
// lease-aware executor never runs an eval longer than the pool leases it;
// and when renewals fail, the eval's call is cancelled before Expires, so
// that the worker has given the executor up before Redis can hand it on
// (after its grace).
type heartbeat struct {
	pool *pool.Pool
	exec *executor.Client
	log  zerolog.Logger
	wake chan struct{} // a beat came or went: look at the schedule again

	mu      sync.Mutex
	beats   map[*beat]struct{}
	running bool
	extends sync.WaitGroup // extensions in flight at the executors
}

// beat is one lease the heartbeat keeps; its fields are guarded by
// heartbeat.mu.
type beat struct {
	lease pool.Lease // as last renewed
	ttl   time.Duration
	due   time.Time // when to renew next
	lost  context.CancelCauseFunc
}

// giveUp is when the eval's call is cancelled unless the lease was renewed
// by then: a twentieth of the TTL before Expires, so that the cancellation
// reaches the executor before the lease ends in Redis.
func (b *beat) giveUp() time.Time { return b.lease.Expires.Add(-b.ttl / 20) }

func newHeartbeat(p *pool.Pool, exec *executor.Client, log zerolog.Logger) *heartbeat {
	return &heartbeat{pool: p, exec: exec, log: log, wake: make(chan struct{}, 1), beats: map[*beat]struct{}{}}
}

// keep renews lease every ttl/3 or a little earlier, until stop is called
// with the beat it returns. A lease that is lost, or that cannot be renewed
// before it expires, is given to lost as the cause: the executor may soon be
// someone else's. Once stop has returned, lost is not called. Renewals run
// under ctx's values but not its cancellation: the heartbeat outlives the
// eval that started it.
func (h *heartbeat) keep(ctx context.Context, lease pool.Lease, ttl time.Duration, lost context.CancelCauseFunc) *beat {
	b := &beat{lease: lease, ttl: ttl, due: time.Now().Add(ttl / 3), lost: lost}
	h.mu.Lock()
	h.beats[b] = struct{}{}
	if !h.running {
		h.running = true
		go h.run(context.WithoutCancel(ctx))
	}
	h.mu.Unlock()
	h.poke()
	return b
}

// stop ends the renewals of a beat keep returned.
func (h *heartbeat) stop(b *beat) {
	h.mu.Lock()
	delete(h.beats, b)
	h.mu.Unlock()
	h.poke()
}

// wait returns once no extension is in flight; the worker calls it when
// its servers have stopped.
func (h *heartbeat) wait() { h.extends.Wait() }

func (h *heartbeat) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *heartbeat) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		h.mu.Lock()
		if len(h.beats) == 0 {
			h.running = false
			h.mu.Unlock()
			return
		}
		var next time.Time
		for b := range h.beats {
			for _, t := range []time.Time{b.due, b.giveUp()} {
				if next.IsZero() || t.Before(next) {
					next = t
				}
			}
		}
		h.mu.Unlock()
		timer.Reset(time.Until(next))
		select {
		case <-h.wake:
			continue
		case <-timer.C:
		}
		h.beat(ctx)
	}
}

// beat gives up the leases that ran out of time, then renews, in one call,
// every lease due within a sixth of its TTL: a lease renewed up to half an
// interval early is as safe, and it lets leases that fall due close together
// share a round trip.
func (h *heartbeat) beat(ctx context.Context) {
	h.mu.Lock()
	now := time.Now()
	var due []*beat
	var rs []pool.Renewal
	timeout := time.Duration(0)
	for b := range h.beats {
		if !now.Before(b.giveUp()) {
			b.lost(fmt.Errorf("%w: %s could not be renewed before it expired", pool.ErrLeaseLost, b.lease.URL))
			delete(h.beats, b)
			continue
		}
		if b.due.After(now.Add(b.ttl / 6)) {
			continue
		}
		due = append(due, b)
		rs = append(rs, pool.Renewal{Lease: b.lease, TTL: b.ttl})
		if left := b.giveUp().Sub(now); timeout == 0 || left < timeout {
			timeout = left // a hung call must not outlast the lease it renews
		}
	}
	h.mu.Unlock()
	if len(due) == 0 {
		return
	}
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	err := h.pool.RenewAll(callCtx, rs)
	cancel()

	h.mu.Lock()
	defer h.mu.Unlock()
	now = time.Now()
	retrying := 0
	for i, b := range due {
		if _, kept := h.beats[b]; !kept {
			continue // its eval ended meanwhile
		}
		switch {
		case err == nil && rs[i].Err == nil:
			b.lease = rs[i].Lease
			b.due = now.Add(b.ttl / 3)
			h.extend(ctx, b)
		case err == nil:
			b.lost(rs[i].Err)
			delete(h.beats, b)
		default:
			// Try again soon; giveUp cancels the call if it never works.
			b.due = now.Add(min(b.ttl/6, time.Second))
			retrying++
		}
	}
	if retrying > 0 {
		h.log.Warn().Err(err).Str("pool", h.pool.Name()).Int("leases", retrying).Msg("lease renew failed; retrying")
	}
}

// extend tells the executor that b's lease was renewed, in the background
// so that a slow executor never delays the renewal of other leases. A
// fencing answer means the executor belongs to a newer lease: the eval is
// given up. One refused for time alone (the executor's lease ran out, or
// this extension came after it) is not: nobody else holds the executor, and
// the eval's own answer, which says so, is on its way, for the attempt to
// tell why. An executor that does not know extensions (fencing only)
// answers 404, which is ignored. h.mu is held.
func (h *heartbeat) extend(ctx context.Context, b *beat) {
	l, timeout := b.lease, b.ttl/3
	h.extends.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := h.exec.Extend(ctx, l.URL, l.EvalID, l.Fence, l.Remaining())
		reason, _ := executor.RefusalReason(err)
		switch {
		case err == nil, errors.Is(err, executor.ErrNotRunning):
		case reason.Timing():
			h.log.Debug().Err(err).Str("executor", l.URL).Str("eval", l.EvalID).Msg("lease extension refused for time; the eval's answer tells why")
		case errors.Is(err, executor.ErrFenced):
			h.mu.Lock()
			if _, kept := h.beats[b]; kept {
				b.lost(fmt.Errorf("%w: the executor refused the extension: %w", pool.ErrLeaseLost, err))
				delete(h.beats, b)
			}
			h.mu.Unlock()
			h.poke()
		case errors.Is(err, executor.ErrUnauthorized):
			h.log.Error().Err(err).Str("executor", l.URL).Str("eval", l.EvalID).Msg(unauthorizedMsg + ": the lease extension was refused, and the executor stops the eval when its lease runs out")
		default:
			h.log.Debug().Err(err).Str("executor", l.URL).Str("eval", l.EvalID).Msg("lease extension not delivered; a lease-aware executor stops the eval when its lease runs out")
		}
	})
}
