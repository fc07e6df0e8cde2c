package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/pool"
)

// heartbeat keeps the leases of all of a worker's running evals alive with
// one round trip per beat (Pool.RenewAll), where a heartbeat per eval costs
// a round trip per lease: a worker with hundreds of long evals in flight
// sends a couple of renewals per lease interval, not hundreds. Its goroutine
// runs only while some eval holds a lease.
type heartbeat struct {
	pool *pool.Pool
	log  zerolog.Logger
	wake chan struct{} // a beat came or went: look at the schedule again

	mu      sync.Mutex
	beats   map[*beat]struct{}
	running bool
}

// beat is one lease the heartbeat keeps; its fields are guarded by
// heartbeat.mu.
type beat struct {
	lease pool.Lease // as last renewed
	ttl   time.Duration
	due   time.Time
	lost  context.CancelCauseFunc
}

func newHeartbeat(p *pool.Pool, log zerolog.Logger) *heartbeat {
	return &heartbeat{pool: p, log: log, wake: make(chan struct{}, 1), beats: map[*beat]struct{}{}}
}

// keep renews lease every ttl/3 or a little earlier, until stop is called.
// A lease that is lost, or that cannot be renewed before its deadline, is
// given to lost as the cause: the executor may already be someone else's.
// Once stop has returned, lost is not called. Renewals run under ctx's
// values but not its cancellation: the heartbeat outlives the eval that
// started it.
func (h *heartbeat) keep(ctx context.Context, lease pool.Lease, ttl time.Duration, lost context.CancelCauseFunc) (stop func()) {
	b := &beat{lease: lease, ttl: ttl, due: time.Now().Add(ttl / 3), lost: lost}
	h.mu.Lock()
	h.beats[b] = struct{}{}
	if !h.running {
		h.running = true
		go h.run(context.WithoutCancel(ctx))
	}
	h.mu.Unlock()
	h.poke()
	return func() {
		h.mu.Lock()
		delete(h.beats, b)
		h.mu.Unlock()
		h.poke()
	}
}

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
			if next.IsZero() || b.due.Before(next) {
				next = b.due
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

// beat renews, in one call, every lease due within a sixth of its TTL: a
// lease renewed up to half an interval early is as safe, and it lets leases
// that fall due close together share a round trip.
func (h *heartbeat) beat(ctx context.Context) {
	h.mu.Lock()
	now := time.Now()
	var due []*beat
	var rs []pool.Renewal
	timeout := time.Duration(0)
	for b := range h.beats {
		if b.due.After(now.Add(b.ttl / 6)) {
			continue
		}
		due = append(due, b)
		rs = append(rs, pool.Renewal{Lease: b.lease, TTL: b.ttl})
		if timeout == 0 || b.ttl/3 < timeout {
			timeout = b.ttl / 3 // a hung call must not outlast the next beat
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
		b.due = now.Add(b.ttl / 3)
		switch {
		case err == nil && rs[i].Err == nil:
			b.lease = rs[i].Lease
		case err == nil:
			b.lost(rs[i].Err)
			delete(h.beats, b)
		case now.After(b.lease.Deadline):
			b.lost(fmt.Errorf("%w: %s could not be renewed before its deadline: %w", pool.ErrLeaseLost, b.lease.URL, err))
			delete(h.beats, b)
		default:
			retrying++
		}
	}
	if retrying > 0 {
		h.log.Warn().Err(err).Int("leases", retrying).Msg("lease renew failed; retrying")
	}
}
