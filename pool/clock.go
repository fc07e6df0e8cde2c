package pool

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/evalpool/evalpool/lua"
)

// TickEvery is how often a worker calls Tick on each pool it serves; each
// tick promises the next within twice that (lib.lua's CLOCK_PROMISE).
const TickEvery = time.Second

// Clock is what a tick found of the pool's time and generation.
type Clock struct {
	// Gen is the pool's generation after the tick: it only grows.
	Gen int64
	// Now is the pool's time: Redis's clock less Skew.
	Now time.Time
	// Back is how far Redis's data went back, when the tick was sent with
	// a generation the pool had not reached: from the time the caller's
	// last tick saw to the last tick that survived. 0 else.
	Back time.Duration
	// Rewound is how many generations were missing when the data went back
	// by more than two ticks (a snapshot restored, a failover to a replica
	// that lagged): a rewind, which Check reports. A failover to a replica
	// a little behind loses the last writes, a tick among them: Back, but
	// no rewind. 0 else.
	Rewound int64
	// Skew is how far the pool's time is behind Redis's clock: the steps
	// of Redis's clock it took out (negative when it stepped back).
	Skew time.Duration
	// Steps counts the steps of Redis's clock the pool took out; LastStep
	// is the last one's size (negative: back) and StepAt when it was seen.
	Steps    int64
	LastStep time.Duration
	StepAt   time.Time
	// Rewinds counts the rewinds ticks have seen; RewoundAt is the last.
	Rewinds   int64
	RewoundAt time.Time

	sent time.Time // when the tick was sent, on this process's monotonic clock
}

// Tick keeps the pool's time going and its generation growing, and
// promises the next tick within twice TickEvery. last is what the caller's
// previous tick returned (zero at first): from its time and this process's
// monotonic clock since, the tick sees a step of Redis's clock and takes it
// out of the pool's time; a pool found below its generation went back,
// which the tick reports (Clock.Back) and, past two ticks' worth, records
// for Check as a rewind (Clock.Rewound).
func (p *Pool) Tick(ctx context.Context, last Clock) (Clock, error) {
	return p.tick(ctx, last, "")
}

// StopTicking is a last Tick that withdraws the caller's promise, for a
// worker that stops: the pool's time does not stand still for it.
func (p *Pool) StopTicking(ctx context.Context, last Clock) (Clock, error) {
	return p.tick(ctx, last, "stop")
}

func (p *Pool) tick(ctx context.Context, last Clock, how string) (Clock, error) {
	var seenAt, elapsed int64
	sent := time.Now()
	if last.Gen > 0 {
		seenAt, elapsed = last.Now.UnixMilli(), sent.Sub(last.sent).Milliseconds()
	}
	v, err := lua.Clock.Run(ctx, p.client, p.script, last.Gen, how, seenAt, elapsed).Int64Slice()
	if err != nil {
		return Clock{}, fmt.Errorf("pool: tick %s: %w", p.name, scriptErr(err))
	}
	if len(v) != 10 {
		return Clock{}, fmt.Errorf("pool: tick %s: the script answered %d values, want 10", p.name, len(v))
	}
	c := Clock{
		Gen: v[0], Now: time.UnixMilli(v[1]), Rewound: v[2], Skew: time.Duration(v[3]) * time.Millisecond,
		Steps: v[4], LastStep: time.Duration(v[5]) * time.Millisecond, Rewinds: v[7], Back: time.Duration(v[9]) * time.Millisecond,
		sent: sent,
	}
	if v[6] > 0 {
		c.StepAt = time.UnixMilli(v[6])
	}
	if v[8] > 0 {
		c.RewoundAt = time.UnixMilli(v[8])
	}
	return c, nil
}

// RewindReported is how long Check reports a rewind that a tick noted.
const RewindReported = 24 * time.Hour

// poolNow is the pool's time from Redis's and the clock's skew (µs, as the
// clock hash holds it): Redis's clock less the steps the ticks took out.
func poolNow(skew string, redisNow time.Time) time.Time {
	us, _ := strconv.ParseInt(skew, 10, 64)
	return redisNow.Add(-time.Duration(us) * time.Microsecond)
}

// rewound is the violation of invariant 9 a tick noted in clock, if it
// noted one within RewindReported of now.
func rewound(clock map[string]string, now time.Time) (Violation, bool) {
	at, _ := strconv.ParseInt(clock["rewound_at"], 10, 64)
	if at == 0 || now.Sub(time.UnixMilli(at)) > RewindReported {
		return Violation{}, false
	}
	return Violation{Invariant: 9, Problem: fmt.Sprintf(
		"Redis's data went back in time at %s (%s rewinds seen): a worker found the pool's generation below one it had seen; evals enqueued and leases taken just before may be lost (reported for %s)",
		time.UnixMilli(at).UTC().Format(time.RFC3339), clock["rewinds"], RewindReported)}, true
}

// Generation reads what tells a client that Redis's data went back under
// it: the pool's generation, which only grows, and how many rewinds ticks
// have noted. A client that sees either fall (or the rewinds grow) since its
// last read knows the pool was rewound.
func (p *Pool) Generation(ctx context.Context) (gen, rewinds int64, err error) {
	v, err := p.client.HMGet(ctx, p.keys.Clock(), "gen", "rewinds").Result()
	if err != nil {
		return 0, 0, fmt.Errorf("pool: read the generation of %s: %w", p.name, err)
	}
	n := func(x any) int64 {
		s, _ := x.(string)
		i, _ := strconv.ParseInt(s, 10, 64)
		return i
	}
	return n(v[0]), n(v[1]), nil
}
