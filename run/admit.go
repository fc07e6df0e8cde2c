package run

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

// Admission. A run's evals do not go to its pool's queue when it is
// submitted: they wait in the run (Queue), and Admit moves them to the
// queue a few at a time, so that the queue, and the workers' slots that
// read it in order, never hold more of one run than its share. The share
// is the rule of fairness between the pool's runs (docs/design.md, "Fair
// share"): the runs split the evals in flight, twice the pool's executors,
// by weight; a run never has more in flight than its MaxExecutors; high
// priority runs are served first, and a normal run left with nothing in
// flight for StarveAfter gets one eval in flight whatever they take.
//
// A pool's evals of no run share it as one more run, of weight 1 and
// normal priority: they wait in Asynq as tasks scheduled HeldFor after
// their enqueue, so that their ID, spec and cancel are Asynq's as for any
// task, and admission moves them to the queue oldest first
// (Admission.Release).

// Priorities of a run.
const (
	PriorityNormal = "normal"
	PriorityHigh   = "high"
)

// Bounds of a run's weight, and how long a normal run waits with nothing in
// flight before high priority runs give it one.
const (
	MaxWeight = 1000
	// MaxMaxExecutors bounds a run's cap: more is no cap.
	MaxMaxExecutors = 1_000_000
	StarveAfter     = 30 * time.Second
	// MaxActiveRuns is how many of a pool's open runs one admission looks
	// at, the oldest first: the rest wait for them.
	MaxActiveRuns = 200
	admitLockTTL  = 10 * time.Second
	queueBatch    = 1000
	// HeldFor is how long after its enqueue an eval of no run is due
	// while it waits for admission: never, in practice.
	HeldFor = 100 * 365 * 24 * time.Hour
)

// Queue writes evals of run r to wait for admission, in order: specs[i] is
// the payload of the eval keys[i].
func (s *Store) Queue(ctx context.Context, r Run, evalKeys []string, specs [][]byte) error {
	name := r.Name
	k := keys.ForRun(name)
	// The run's keys live as long as its meta, which Create set.
	ttl, err := s.client.PTTL(ctx, k.Meta()).Result()
	if err != nil {
		return fmt.Errorf("run %s: queue: %w", name, err)
	}
	for start := 0; start < len(evalKeys); start += queueBatch {
		end := min(start+queueBatch, len(evalKeys))
		fields := make([]any, 0, 2*(end-start))
		queued := make([]any, 0, end-start)
		for i := start; i < end; i++ {
			fields = append(fields, evalKeys[i], specs[i])
			queued = append(queued, evalKeys[i])
		}
		// Not a MULTI, which a Redis at maxmemory refuses as EXECABORT: a
		// spec written without its place in the queue is queued again by
		// the resume its error asks for.
		if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.HSet(ctx, k.Specs(), fields...)
			pipe.RPush(ctx, k.Queued(), queued...)
			if ttl > 0 {
				pipe.PExpire(ctx, k.Specs(), ttl)
				pipe.PExpire(ctx, k.Queued(), ttl)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("run %s: queue evals %d to %d: %w", name, start+1, end, lua.Full(err))
		}
	}
	// After the evals: an admission that drops the run from the index
	// looks again, and finds them (admit).
	if err := s.client.ZAddNX(ctx, keys.Admissible(r.Pool), redis.Z{Score: float64(r.CreatedAt.UnixMilli()), Member: name}).Err(); err != nil {
		return fmt.Errorf("run %s: queue: %w", name, lua.Full(err))
	}
	return nil
}

// Unqueue drops the evals of run name that wait for admission (a cancel
// records their ends): none of them is admitted any more.
func (s *Store) Unqueue(ctx context.Context, name string) error {
	if err := s.client.Del(ctx, keys.ForRun(name).Queued()).Err(); err != nil {
		return fmt.Errorf("run %s: unqueue: %w", name, err)
	}
	return nil
}

// Admission is how Admit puts the evals it admitted on the pool's queue.
type Admission struct {
	// Enqueue puts specs of run r, just admitted, on the pool's queue. An
	// eval already there (by its ID) is no error.
	Enqueue func(ctx context.Context, r Run, specs []string) error
	// Held is the ZSET of the pool's evals of no run waiting for
	// admission, by the second each is due (tasks.HeldKey). Empty for
	// none: they are not admitted.
	Held string
	// Release moves the held eval id to the pool's queue; false when it is
	// held no more (cancelled meanwhile).
	Release func(ctx context.Context, id string) (bool, error)
}

// Admit admits evals of the pool's open runs, and its evals of no run, by
// the fair share, for a pool of capacity executors in service, and puts
// them on its queue. One process admits for a pool at a time; a call that
// finds another admitting asks it to go round again, and returns. It
// returns how many it admitted.
func (s *Store) Admit(ctx context.Context, pool string, capacity int, a Admission) (int, error) {
	total := 0
	for range 10 {
		unlock, err := s.lock(ctx, keys.Admitting(pool), admitLockTTL)
		if err != nil {
			return total, fmt.Errorf("admit to pool %s: %w", pool, lua.Full(err))
		}
		if unlock == nil {
			return total, s.client.Set(ctx, keys.Readmit(pool), 1, 2*admitLockTTL).Err()
		}
		s.client.Del(ctx, keys.Readmit(pool))
		n, err := s.admit(ctx, pool, capacity, a)
		unlock()
		total += n
		if err != nil {
			return total, err
		}
		if again, err := s.client.Exists(ctx, keys.Readmit(pool)).Result(); err != nil || again == 0 {
			return total, err
		}
	}
	return total, nil
}

// unindex drops run name, created at created, from the pool's admissible
// runs, having found it with nothing to admit; a Queue meanwhile has its
// evals written before it indexes the run, so that what the second look
// finds is put back.
func (s *Store) unindex(ctx context.Context, pool, name string, created time.Time) error {
	k := keys.ForRun(name)
	if err := s.client.ZRem(ctx, keys.Admissible(pool), name).Err(); err != nil {
		return fmt.Errorf("admit to pool %s: %w", pool, err)
	}
	var queued, inflight *redis.IntCmd
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		queued, inflight = pipe.LLen(ctx, k.Queued()), pipe.SCard(ctx, k.Admitted())
		return nil
	}); err != nil {
		return fmt.Errorf("admit to pool %s: %w", pool, err)
	}
	if queued.Val() > 0 || inflight.Val() > 0 {
		return s.client.ZAddNX(ctx, keys.Admissible(pool), redis.Z{Score: float64(created.UnixMilli()), Member: name}).Err()
	}
	return nil
}

// share is an open run as admission sees it.
type share struct {
	run              Run
	inflight, queued int
	admittedAt       time.Time
	want             int // in flight after this admission
}

func (s *Store) admit(ctx context.Context, pool string, capacity int, a Admission) (int, error) {
	names, err := s.client.ZRange(ctx, keys.Admissible(pool), 0, MaxActiveRuns-1).Result()
	if err != nil {
		return 0, fmt.Errorf("admit to pool %s: %w", pool, err)
	}
	metas := make([]*redis.MapStringStringCmd, len(names))
	inflight := make([]*redis.IntCmd, len(names))
	queued := make([]*redis.IntCmd, len(names))
	// Redis's clock, not this process's, dates admissions and tells a
	// starving run: every admitter, whatever its clock, reads the same.
	var clock *redis.TimeCmd
	var loose standaloneCmds
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		clock = pipe.Time(ctx)
		if a.Held != "" {
			loose = readStandalone(ctx, pipe, pool, a.Held)
		}
		for i, name := range names {
			k := keys.ForRun(name)
			metas[i], inflight[i], queued[i] = pipe.HGetAll(ctx, k.Meta()), pipe.SCard(ctx, k.Admitted()), pipe.LLen(ctx, k.Queued())
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("admit to pool %s: %w", pool, err)
	}
	var shares []*share
	for i, name := range names {
		r, err := runOf(name, metas[i].Val(), nil)
		if err != nil || queued[i].Val() == 0 && inflight[i].Val() == 0 {
			if err := s.unindex(ctx, pool, name, r.CreatedAt); err != nil {
				return 0, err
			}
			continue
		}
		sh := &share{run: r, inflight: int(inflight[i].Val()), queued: int(queued[i].Val())}
		if ms, err := strconv.ParseInt(metas[i].Val()["admitted_at"], 10, 64); err == nil {
			sh.admittedAt = time.UnixMilli(ms)
		} else {
			sh.admittedAt = r.CreatedAt
		}
		shares = append(shares, sh)
	}
	if sh := loose.share(); sh != nil {
		shares = append(shares, sh)
	}
	now := clock.Val()
	fairShares(shares, 2*max(capacity, 1), now)
	total := 0
	for _, sh := range shares {
		if sh.want <= sh.inflight || sh.queued == 0 {
			continue
		}
		if sh.run.Name == "" {
			n, err := s.admitHeld(ctx, pool, a, sh.want-sh.inflight, now)
			total += n
			if err != nil {
				return total, err
			}
			continue
		}
		got, err := lua.AdmitRun.Run(ctx, s.client, keys.ForRun(sh.run.Name).Script(), sh.want-sh.inflight, now.UnixMilli()).Slice()
		if err != nil {
			return total, fmt.Errorf("admit run %s: %w", sh.run.Name, lua.Full(err))
		}
		var specs []string
		for _, v := range got[2:] {
			if spec, ok := v.(string); ok {
				specs = append(specs, spec)
			}
		}
		if len(specs) > 0 {
			total += len(specs)
			if err := a.Enqueue(ctx, sh.run, specs); err != nil {
				return total, fmt.Errorf("admit run %s: %w", sh.run.Name, err)
			}
		}
	}
	return total, nil
}

// standaloneCmds read a pool's evals of no run for admission: how many are
// in flight, when the last was admitted, how many wait, and since when the
// oldest.
type standaloneCmds struct {
	inflight, held *redis.IntCmd
	last, oldest   *redis.ZSliceCmd
}

func readStandalone(ctx context.Context, pipe redis.Pipeliner, pool, held string) standaloneCmds {
	k := keys.Standalone(pool)
	return standaloneCmds{
		inflight: pipe.ZCard(ctx, k), last: pipe.ZRevRangeWithScores(ctx, k, 0, 0),
		held: pipe.ZCard(ctx, held), oldest: pipe.ZRangeWithScores(ctx, held, 0, 0),
	}
}

// share is the evals of no run as one more run, nil when it has none. It
// was last admitted to when its last eval in flight was; with none in
// flight, when its oldest waiting eval was enqueued.
func (c standaloneCmds) share() *share {
	if c.inflight == nil || c.inflight.Val() == 0 && c.held.Val() == 0 {
		return nil
	}
	sh := &share{run: Run{Weight: 1, Priority: PriorityNormal}, inflight: int(c.inflight.Val()), queued: int(c.held.Val())}
	switch {
	case len(c.last.Val()) > 0:
		sh.admittedAt = time.UnixMilli(int64(c.last.Val()[0].Score))
	case len(c.oldest.Val()) > 0:
		sh.admittedAt = time.Unix(int64(c.oldest.Val()[0].Score), 0).Add(-HeldFor)
	}
	return sh
}

// admitHeld admits the n oldest of the pool's held evals: each is in
// flight before it is released to the queue, so that a release a crash
// cut short is found (Standalone) and released again.
func (s *Store) admitHeld(ctx context.Context, pool string, a Admission, n int, now time.Time) (int, error) {
	ids, err := s.client.ZRange(ctx, a.Held, 0, int64(n-1)).Result()
	if err != nil {
		return 0, fmt.Errorf("admit evals of no run to pool %s: %w", pool, err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	members := make([]redis.Z, len(ids))
	for i, id := range ids {
		members[i] = redis.Z{Score: float64(now.UnixMilli()), Member: id}
	}
	if err := s.client.ZAdd(ctx, keys.Standalone(pool), members...).Err(); err != nil {
		return 0, fmt.Errorf("admit evals of no run to pool %s: %w", pool, lua.Full(err))
	}
	admitted := 0
	for _, id := range ids {
		ok, err := a.Release(ctx, id)
		if err != nil {
			return admitted, fmt.Errorf("admit eval %s: %w", id, err)
		}
		if !ok {
			if err := s.EndStandalone(ctx, pool, id); err != nil {
				return admitted, err
			}
			continue
		}
		admitted++
	}
	return admitted, nil
}

// Unadmit takes evals of run name out of flight without ending them: their
// tasks are orphaned, and Asynq hands them out again in time
// (client.Readmit).
func (s *Store) Unadmit(ctx context.Context, name string, evalKeys ...string) error {
	if len(evalKeys) == 0 {
		return nil
	}
	members := make([]any, len(evalKeys))
	for i, key := range evalKeys {
		members[i] = key
	}
	if err := s.client.SRem(ctx, keys.ForRun(name).Admitted(), members...).Err(); err != nil {
		return fmt.Errorf("run %s: unadmit: %w", name, err)
	}
	return nil
}

// Standalone returns the IDs of the pool's evals of no run in flight.
func (s *Store) Standalone(ctx context.Context, pool string) ([]string, error) {
	ids, err := s.client.ZRange(ctx, keys.Standalone(pool), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("evals of no run of pool %s in flight: %w", pool, err)
	}
	return ids, nil
}

// EndStandalone takes evals of no run of the pool out of flight: they
// ended, or were cancelled.
func (s *Store) EndStandalone(ctx context.Context, pool string, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	members := make([]any, len(ids))
	for i, id := range ids {
		members[i] = id
	}
	if err := s.client.ZRem(ctx, keys.Standalone(pool), members...).Err(); err != nil {
		return fmt.Errorf("evals of no run of pool %s: end: %w", pool, err)
	}
	return nil
}

// fairShares sets each run's want: how many of its evals may be in flight,
// of budget in all. High priority runs take what they want first; the
// normal ones share the rest. Within each, runs split by weight, none past
// what it has to run or its MaxExecutors (weighted max-min fairness), and
// a run with less than its share lets the others have the difference. A
// normal run with evals waiting and none in flight since StarveAfter gets
// one. No run is asked to give back what it has in flight.
func fairShares(shares []*share, budget int, now time.Time) {
	left := budget
	for _, high := range []bool{true, false} {
		var group []*share
		for _, sh := range shares {
			if (sh.run.Priority == PriorityHigh) == high {
				group = append(group, sh)
			}
		}
		left -= split(group, max(left, 0))
	}
	for _, sh := range shares {
		// A last admission dated well after now is Redis's clock stepped
		// back: how long the run waited is unknown, so it is taken as long.
		waited := now.Sub(sh.admittedAt)
		if sh.run.Priority != PriorityHigh && sh.want == 0 && sh.queued > 0 && (waited > StarveAfter || waited < -StarveAfter) {
			sh.want = 1
		}
	}
}

// split shares budget among group by weight, water-filling: each gets
// min(demand, level × weight), at whole evals, the remainder to the least
// served. It returns what it gave.
func split(group []*share, budget int) int {
	demand := func(sh *share) int {
		d := sh.inflight + sh.queued
		if c := sh.run.MaxExecutors; c > 0 {
			d = min(d, c)
		}
		return d
	}
	slices.SortFunc(group, func(a, b *share) int {
		return cmpFloat(float64(demand(a))/float64(a.run.weight()), float64(demand(b))/float64(b.run.weight()))
	})
	left, weights := budget, 0
	for _, sh := range group {
		weights += sh.run.weight()
	}
	for _, sh := range group {
		fair := int(math.Floor(float64(left) * float64(sh.run.weight()) / float64(weights)))
		sh.want = min(demand(sh), fair)
		left -= sh.want
		weights -= sh.run.weight()
	}
	// Whole evals left over go one at a time to the least served.
	for left > 0 {
		var least *share
		for _, sh := range group {
			if sh.want < demand(sh) && (least == nil || float64(sh.want)/float64(sh.run.weight()) < float64(least.want)/float64(least.run.weight())) {
				least = sh
			}
		}
		if least == nil {
			break
		}
		least.want++
		left--
	}
	return budget - left
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Admitted returns, for each of the pool's admissible runs (MaxActiveRuns
// at most) that has evals in flight, their specs by eval key: what its
// pool's queue should hold, or have held.
func (s *Store) Admitted(ctx context.Context, pool string) (map[string]map[string]string, error) {
	names, err := s.client.ZRange(ctx, keys.Admissible(pool), 0, MaxActiveRuns-1).Result()
	if err != nil {
		return nil, fmt.Errorf("runs of pool %s in flight: %w", pool, err)
	}
	out := map[string]map[string]string{}
	for _, name := range names {
		k := keys.ForRun(name)
		admitted, err := s.client.SMembers(ctx, k.Admitted()).Result()
		if err != nil {
			return nil, fmt.Errorf("run %s in flight: %w", name, err)
		}
		if len(admitted) == 0 {
			continue
		}
		specs, err := s.client.HMGet(ctx, k.Specs(), admitted...).Result()
		if err != nil {
			return nil, fmt.Errorf("run %s in flight: %w", name, err)
		}
		out[name] = map[string]string{}
		for i, key := range admitted {
			if spec, ok := specs[i].(string); ok {
				out[name][key] = spec
			}
		}
	}
	return out, nil
}

// Waiting returns the payload of the eval key of run name while it waits
// for admission, or is admitted and not yet in its pool's queue; ok is
// false once it is past that, or for no such eval.
func (s *Store) Waiting(ctx context.Context, name, key string) (spec []byte, ok bool, err error) {
	if ValidateName(name) != nil {
		return nil, false, nil
	}
	b, err := s.client.HGet(ctx, keys.ForRun(name).Specs(), key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("run %s: eval %s: %w", name, key, err)
	}
	return b, true, nil
}

// Share is what a run asked of its pool, and what it has of it now.
type Share struct {
	Weight       int    `json:"weight"`
	MaxExecutors int    `json:"max_executors"`
	Priority     string `json:"priority"`
	// InFlight are its evals admitted that have not ended; Queued, those
	// waiting for admission.
	InFlight int `json:"in_flight"`
	Queued   int `json:"queued"`
	// HeldLastMinute is how many executors it held on average over the
	// last minute (60 to 70 s), counting the attempts that ended in it.
	HeldLastMinute float64 `json:"held_last_minute"`
}

// busySlot and busyRing are run_busy.lua's (SLOT, RING): a run's executor time is kept
// by 10 s slot, the last 7.
const (
	busySlot = 10 * time.Second
	busyRing = 7
)

// Share reads run name's share, in O(1).
func (s *Store) Share(ctx context.Context, name string) (Share, error) {
	k := keys.ForRun(name)
	meta, counts := redis.NewMapStringStringCmd(ctx, "hgetall", k.Meta()), redis.NewMapStringStringCmd(ctx, "hgetall", k.Counts())
	sr := newShareRead(ctx, k)
	if err := s.read(ctx, name, append(sr.cmds(), meta, counts)...); err != nil {
		return Share{}, err
	}
	r, err := runOf(name, meta.Val(), nil)
	if err != nil {
		return Share{}, err
	}
	return sr.share(r, counts.Val()), nil
}

// shareRead is what a Share reads besides the run's meta and counts, which
// a reader of those too (a tally's snapshot) reads once for both.
type shareRead struct {
	inflight, queued *redis.IntCmd
	clock            *redis.TimeCmd
}

func newShareRead(ctx context.Context, k keys.Run) shareRead {
	return shareRead{inflight: redis.NewIntCmd(ctx, "scard", k.Admitted()), queued: redis.NewIntCmd(ctx, "llen", k.Queued()), clock: redis.NewTimeCmd(ctx, "time")}
}

func (sr shareRead) cmds() []redis.Cmder { return []redis.Cmder{sr.inflight, sr.queued, sr.clock} }

// share is r's Share, of its counts and what sr read.
func (sr shareRead) share(r Run, counts map[string]string) Share {
	return Share{Weight: r.Weight, MaxExecutors: r.MaxExecutors, Priority: r.Priority, InFlight: int(sr.inflight.Val()), Queued: int(sr.queued.Val()),
		HeldLastMinute: heldOver(counts, sr.clock.Val())}
}

// heldOver is the executors held on average over the ring's window ending
// now (its last six slots and the one under way), from the run's counts.
func heldOver(counts map[string]string, now time.Time) float64 {
	last := now.UnixMilli() / busySlot.Milliseconds()
	var busy int64
	for i := range busyRing {
		at, ms, ok := strings.Cut(counts["busy"+strconv.Itoa(i)], ":")
		slot, err1 := strconv.ParseInt(at, 10, 64)
		n, err2 := strconv.ParseInt(ms, 10, 64)
		if ok && err1 == nil && err2 == nil && slot > last-busyRing && slot <= last {
			busy += n
		}
	}
	window := (busyRing-1)*busySlot.Milliseconds() + now.UnixMilli() - last*busySlot.Milliseconds()
	return math.Round(100*float64(busy)/float64(window)) / 100
}
