package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// handBack is the error of an attempt that goes back to its queue without
// spending a retry, after delay: it met a misconfiguration, not a fault of
// the eval or of its executor (a secret the executor refuses, a round trip
// too long for the lease, clocks that differ), and the worker has said so.
// Archiving the eval would burn it for what only an operator can fix.
type handBack struct {
	err     error
	outcome string // the attempt's outcome in evalpool_eval_attempts_total
	delay   time.Duration
}

func (h *handBack) Error() string { return h.err.Error() }
func (h *handBack) Unwrap() error { return h.err }

// spendsNoRetry reports whether an attempt that failed with err goes back
// to its queue without spending a retry: it waits for an executor, or it
// is handed back.
func spendsNoRetry(err error) bool {
	var hb *handBack
	return waitsForExecutor(err) || errors.As(err, &hb)
}

// maxHandBackDelay bounds the back-off of attempts handed back in a row
// for one executor: while the misconfiguration lasts, each of its evals
// comes back at most this often, and none is archived for it.
const maxHandBackDelay = time.Minute

// streaks counts, per executor, the attempts handed back in a row: the
// delay before the next doubles from NoExecutorDelay up to
// maxHandBackDelay, and an attempt that gets an answer resets it.
type streaks struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *streaks) next(url string, base time.Duration) time.Duration {
	s.mu.Lock()
	n := s.n[url]
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[url] = n + 1
	s.mu.Unlock()
	d := maxHandBackDelay
	if n < 20 && base<<n < maxHandBackDelay {
		d = base << n
	}
	return d/2 + rand.N(d/2+1)
}

func (s *streaks) reset(url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.n, url)
}

// misconfigured turns the error of an attempt that ran out at the boundary
// with its executor into a hand-back, and logs why at error level: a 401
// (this worker's secret is not the executor's), or the executor's lease
// over for time alone (ran out unextended, over on arrival, a deadline come
// early) while the pool's lease was live, which is a round trip too long
// for the lease or a clock that differs. Any other error is returned as it
// is. prior is what the client knew of the executor's clock when it sent
// the call (known: it knew something).
func (w *Worker) misconfigured(ctx context.Context, sp *servedPool, lease pool.Lease, ttl time.Duration, live bool, prior executor.ClockOffset, known bool, err error) error {
	url := lease.URL
	log := w.log.With().Str("pool", sp.pool.Name()).Str("eval", lease.EvalID).Str("executor", url).Logger()
	reason, _ := executor.RefusalReason(err)
	if reason == executor.ReasonStaleFence && w.raiseFence(ctx, sp, lease, err) {
		return &handBack{err: err, outcome: "fence_raised", delay: w.cfg.NoExecutorDelay}
	}
	switch {
	case errors.Is(err, executor.ErrUnauthorized):
		w.cfg.Metrics.unauthorized.WithLabelValues(sp.pool.Name(), url).Inc()
		log.Error().Err(err).Msg(unauthorizedMsg + "; the eval goes back to its queue without spending a retry")
		return &handBack{err: err, outcome: "unauthorized", delay: w.handBacks.next(url, w.cfg.NoExecutorDelay)}
	case !live || !reason.Timing() && !errors.Is(err, executor.ErrEarlyDeadline):
		return err
	}
	cause, outcome := w.timingCause(ctx, url, ttl, prior, known, errors.Is(err, executor.ErrEarlyDeadline))
	if outcome == "unauthorized" {
		w.cfg.Metrics.unauthorized.WithLabelValues(sp.pool.Name(), url).Inc()
	}
	log.Error().Err(err).Msg("the executor ended the eval for time while its lease was live: " + cause + "; the eval goes back to its queue without spending a retry")
	return &handBack{err: fmt.Errorf("%w: %s", err, cause), outcome: outcome, delay: w.handBacks.next(url, w.cfg.NoExecutorDelay)}
}

// raiseFence repairs an executor that refused the lease's fence as stale
// while the highest it has seen (its answer's max_fence) is at or above
// every fence the pool has granted it: a fence no grant of the pool reached
// was sent to it (by hand, or by a pool whose Redis lost its data), and
// the executor would refuse every holder the pool hands it. It raises the
// fence the executor's record keeps to that fence (pool.RaiseFence), so
// that its next grant passes, and reports whether it did; the attempt then goes back to
// its queue without spending a retry. A stale fence below the counter is
// a newer holder's, and is left as it is.
func (w *Worker) raiseFence(ctx context.Context, sp *servedPool, lease pool.Lease, err error) bool {
	var refused *executor.RefusedError
	if !errors.As(err, &refused) || refused.MaxFence < lease.Fence {
		return false
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
	defer cancel()
	log := w.log.With().Str("pool", sp.pool.Name()).Str("eval", lease.EvalID).Str("executor", lease.URL).Int64("fence", lease.Fence).Int64("executor_max_fence", refused.MaxFence).Logger()
	raised, rerr := sp.pool.RaiseFence(rctx, lease.URL, refused.MaxFence)
	switch {
	case rerr != nil:
		log.Error().Err(rerr).Msg("the executor has seen a fence the pool never granted, and its fence in the pool could not be raised past it: it refuses every lease of this pool until it restarts")
	case raised:
		log.Warn().Msg("the executor had seen a fence above every one the pool granted (sent to it by hand, or by a pool that lost its data): its fence in the pool was raised past it; the eval goes back to its queue without spending a retry")
	}
	return raised
}

// unauthorizedMsg says what a 401 means for an operator. It never holds
// the secret.
const unauthorizedMsg = "the executor refused this worker's signature (401): this worker's executor secret (--executor-secret or " +
	executor.EnvSecret + ") is not the executor's"

// clockTolerance is how far the clocks of a worker and an executor may
// differ before the worker says so. Calls are dated in the executor's
// clock whatever the difference; a second is what NTP keeps far under.
const clockTolerance = time.Second

// maxTimingProbe bounds the request that measures the round trip to an
// executor that ended an eval for time.
const maxTimingProbe = 10 * time.Second

// timingCause says why an executor ended an eval for time while the
// pool's lease was live: its clock is not the one the call was dated by
// (learned from its answer, so the next call is dated right), its
// extensions were refused for their signature, or the round trip to it is
// too long for the lease TTL. It measures with a signed request that
// changes nothing (executor.Client.CheckSignature), bounded by the TTL,
// and returns the cause, with its fix, and the attempt's outcome. early
// says the executor stopped the eval at a deadline that came early there.
func (w *Worker) timingCause(ctx context.Context, url string, ttl time.Duration, prior executor.ClockOffset, known, early bool) (cause, outcome string) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(ttl, maxTimingProbe))
	defer cancel()
	started := time.Now()
	perr := w.cfg.Executor.CheckSignature(pctx, url)
	rtt := time.Since(started)
	now, ok := w.cfg.Executor.Offset(url)
	moved := !known && abs(now.Mid()) > clockTolerance || known && abs(now.Mid()-prior.Mid()) > clockTolerance
	switch {
	case ok && moved:
		return "the executor's clock differs from the time the call was dated by; the next call is dated in the executor's clock", "clock"
	case early:
		return "the executor's deadline came before this worker's though the call was dated in its clock: its clock stepped, or it keeps a deadline of its own", "clock"
	case errors.Is(perr, executor.ErrUnauthorized):
		return unauthorizedMsg + ", so its lease extensions were refused", "unauthorized"
	case perr != nil:
		return fmt.Sprintf("the round trip to %s is over %s (a check got no answer), too long for a lease TTL of %s: raise --lease-ttl to at least three round trips",
			url, rtt.Round(time.Millisecond), ttl), "slow_path"
	case 3*rtt > ttl:
		need := (3*rtt + time.Second - 1).Truncate(time.Second)
		return fmt.Sprintf("the round trip to %s (%s) is too long for a lease TTL of %s: raise --lease-ttl to at least %s",
			url, rtt.Round(time.Millisecond), ttl, need), "slow_path"
	}
	return fmt.Sprintf("the lease's extensions did not reach the executor in time, though the round trip to it is %s for a lease TTL of %s: lost or held up on the way",
		rtt.Round(time.Millisecond), ttl), "slow_path"
}

func abs(d time.Duration) time.Duration { return max(d, -d) }

// holds reports whether the heartbeat still keeps b's lease with time left
// before it would give it up: as far as this worker knows, the pool's lease
// is live.
func (h *heartbeat) holds(b *beat) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, kept := h.beats[b]
	return kept && time.Now().Before(b.giveUp())
}

// wall is the worker's wall clock: the executor client's.
func (w *Worker) wall() time.Time {
	if w.cfg.Executor.Now != nil {
		return w.cfg.Executor.Now()
	}
	return time.Now()
}

// clockNotes are the executors whose clock the worker said differs from
// its own, and by how much: it says so again only when that changes.
type clockNotes struct {
	mu  sync.Mutex
	off map[string]time.Duration
}

// noteClock logs, once per executor and change, that the executor's clock
// differs from this worker's by more than clockTolerance, or agrees again,
// from what the executor client learned of it. It names which clock is off
// when Redis's agrees with one of them.
func (w *Worker) noteClock(ctx context.Context, url string) {
	off, ok := w.cfg.Executor.Offset(url)
	if !ok || off.Max-off.Min > clockTolerance {
		return // nothing known, or too loosely to say
	}
	mid := off.Mid()
	w.clocks.mu.Lock()
	last, said := w.clocks.off[url]
	differs := abs(mid) > clockTolerance
	switch {
	case differs && (!said || abs(mid-last) > clockTolerance):
		if w.clocks.off == nil {
			w.clocks.off = map[string]time.Duration{}
		}
		w.clocks.off[url] = mid
	case !differs && said:
		delete(w.clocks.off, url)
	default:
		w.clocks.mu.Unlock()
		return
	}
	w.clocks.mu.Unlock()
	log := w.log.With().Str("executor", url).Float64("executor_minus_worker_s", mid.Seconds()).Logger()
	if !differs {
		log.Info().Msg("the clock of the executor agrees with this worker's again")
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
	defer cancel()
	redisOff, redisOK := w.redisOffset(rctx)
	var msg string
	switch {
	case redisOK && abs(redisOff) > clockTolerance && abs(mid-redisOff) <= clockTolerance:
		msg = fmt.Sprintf("clocks differ: this worker's clock is %s Redis's and the executor's", relative(-redisOff))
	case redisOK && abs(redisOff) <= clockTolerance:
		msg = fmt.Sprintf("clocks differ: the executor's clock is %s this worker's and Redis's", relative(mid))
	default:
		msg = fmt.Sprintf("clocks differ: the executor's clock is %s this worker's", relative(mid))
		if redisOK {
			msg += fmt.Sprintf(", and this worker's is %s Redis's", relative(-redisOff))
		}
	}
	log.Warn().Msg(msg + "; calls to it are dated in its clock, so leases and deadlines hold, but set the clocks right (NTP)")
}

// relative says d as "<d> ahead of" or "<d> behind".
func relative(d time.Duration) string {
	if d < 0 {
		return (-d).Round(100*time.Millisecond).String() + " behind"
	}
	return d.Round(100*time.Millisecond).String() + " ahead of"
}

// redisOffset is Redis's clock minus this worker's, read with TIME, and
// false when Redis did not answer within clockTolerance.
func (w *Worker) redisOffset(ctx context.Context) (time.Duration, bool) {
	sent := w.wall()
	at, err := w.redis.Time(ctx).Result()
	rtt := w.wall().Sub(sent)
	if err != nil || rtt > clockTolerance {
		return 0, false
	}
	return at.Sub(sent.Add(rtt / 2)), true
}

// signatureChecks is how many executors of each pool the worker asks at
// start whether they accept its signature.
const signatureChecks = 3

// checkSignatures makes sure, before the worker takes a task, that its
// pools' executors accept its signature: a signed request that changes
// nothing (executor.Client.CheckSignature) to a few registered executors
// of each pool, at once. A 401 refuses the start: every eval would reach
// executors that refuse it. An executor that does not answer is only
// warned of (it may be down, and the pool quarantines it). The answers also
// tell the worker the executors' clocks.
func (w *Worker) checkSignatures(ctx context.Context) error {
	type check struct {
		pool, url string
		err       error
	}
	var checks []*check
	for name, sp := range w.pools {
		execs, _, _, err := sp.pool.Page(ctx, 0, signatureChecks)
		if err != nil {
			return fmt.Errorf("worker: list the executors of pool %s: %w", name, err)
		}
		for _, e := range execs[:min(len(execs), signatureChecks)] {
			checks = append(checks, &check{pool: name, url: e.URL})
		}
	}
	var wg sync.WaitGroup
	for _, c := range checks {
		wg.Go(func() {
			defer func() {
				if r := recover(); r != nil { // a bug under the client must not kill the worker where an attempt would survive it
					c.err = fmt.Errorf("executor %s: panic: %v", c.url, r)
				}
			}()
			cctx, cancel := context.WithTimeout(ctx, w.cfg.ProbeTimeout)
			defer cancel()
			c.err = w.cfg.Executor.CheckSignature(cctx, c.url)
		})
	}
	wg.Wait()
	for _, c := range checks {
		switch {
		case errors.Is(c.err, executor.ErrUnauthorized):
			return fmt.Errorf("%w: executor %s of pool %s refused this worker's signature (401): the executor secret (--executor-secret or %s) is not the executor's; not starting",
				ErrUnauthorizedWorker, c.url, c.pool, executor.EnvSecret)
		case c.err != nil:
			w.log.Warn().Err(c.err).Str("pool", c.pool).Str("executor", c.url).Msg("could not check that the executor accepts this worker's signature; starting anyway")
		default:
			w.noteClock(ctx, c.url)
		}
	}
	return nil
}

// ErrUnauthorizedWorker means the worker refused to start: an executor of
// its pools refused its signature.
var ErrUnauthorizedWorker = errors.New("worker: executor secret refused")

// ErrRedisPermission means the worker refused to start: its Redis user may
// not run what Asynq runs on Asynq's keys.
var ErrRedisPermission = errors.New("worker: redis user lacks permissions")

// checkPermissions refuses a Redis user that cannot run Asynq's commands on
// Asynq's keys and channel (an ACL that allows evalpool:* only): Asynq
// would log a NOPERM error per poll, and every eval would wait for ever.
// It sends commands that change nothing: writes that remove a member no
// key holds on one key of each kind Asynq writes, per queue served, a
// script, and a subscription to Asynq's cancel channel. Errors other than
// NOPERM (a key of another type, a Redis away) are the later calls' to
// report.
func (w *Worker) checkPermissions(ctx context.Context, queues []string) error {
	const absent = "evalpool:permission-check"
	cmds := [][]any{
		{"SREM", "asynq:queues", absent},
		{"ZREM", "asynq:servers", absent},
		{"ZREM", "asynq:workers", absent},
		{"EVAL", "return 0", "0"},
	}
	for _, q := range queues {
		cmds = append(cmds,
			[]any{"LREM", "asynq:{" + q + "}:pending", "0", absent},
			[]any{"HDEL", tasks.ResultKey(q, absent), "result"})
	}
	for _, cmd := range cmds {
		if err := w.redis.Do(ctx, cmd...).Err(); noPerm(err) {
			return permissionErr(fmt.Sprint(cmd[0], " ", cmd[1]), err)
		}
	}
	sub := w.redis.Subscribe(ctx, "asynq:cancel")
	defer sub.Close()
	if _, err := sub.Receive(ctx); noPerm(err) {
		return permissionErr("SUBSCRIBE asynq:cancel", err)
	}
	return nil
}

func noPerm(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOPERM") }

func permissionErr(what string, err error) error {
	return fmt.Errorf("%w: %s: %v: grant the worker's Redis user Asynq's keys and channel beside evalpool's (ACL SETUSER <user> ~asynq:* &asynq:*); not starting",
		ErrRedisPermission, what, err)
}
