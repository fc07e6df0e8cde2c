package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/lua"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// An eval attempt runs in three steps: execute returns what it came to (an
// outcome), report tells it (metrics, log, the run's record), and the
// worker's release policy ends its lease (endLease).

// outcome is what one eval attempt came to.
type outcome struct {
	eval tasks.Eval
	sp   *servedPool // nil when the task was refused: it named no pool served
	// lease is the executor's lease; zero when the attempt never held one.
	lease   pool.Lease
	attempt int // retries before this attempt
	log     zerolog.Logger
	res     executor.Result
	took    time.Duration
	// err is why the attempt failed; nil when the executor graded the eval.
	err error
	// result is the eval's result when it ended (graded, or errored on its
	// last attempt) and is not yet kept anywhere.
	result    []byte
	verdict   pool.Verdict
	retrying  bool
	cancelled bool
}

func (o *outcome) leased() bool { return o.lease.Token != "" }

// cleanup is the cleanup task of the attempt's lease, its path unset.
func (o *outcome) cleanup() tasks.Cleanup {
	return tasks.Cleanup{EvalID: o.eval.ID, Pool: o.sp.pool.Name(), URL: o.lease.URL, Token: o.lease.Token, Fence: o.lease.Fence,
		Verdict: string(o.verdict), Retrying: o.retrying}
}

// handleEval runs one attempt of an eval task.
func (w *Worker) handleEval(ctx context.Context, t *asynq.Task) (err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer w.attempts.remove(w.attempts.add(cancel))
	w.gear.busy()
	o := &outcome{}
	defer func() {
		// A panic skips the rest; turned into an error that carries the
		// lease, it still reaches the error handler's cleanup.
		if r := recover(); r != nil {
			w.log.Error().Str("eval", o.eval.ID).Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("eval attempt panicked")
			err = fmt.Errorf("eval %s: panic: %v", o.eval.ID, r)
			if o.leased() {
				err = w.attemptError(ctx, o.sp, o.lease, pool.VerdictNone, err)
			}
		}
	}()
	w.execute(ctx, t, o)
	w.report(ctx, o)
	if !o.leased() {
		return o.err
	}
	if err := (*w.endLease.Load())(ctx, t, o); err != nil {
		return w.attemptError(ctx, o.sp, o.lease, o.verdict, err)
	}
	return nil
}

// execute leases an executor for the eval and calls it, filling in o as it
// goes.
func (w *Worker) execute(ctx context.Context, t *asynq.Task, o *outcome) {
	o.eval, o.sp, o.err = w.evalOf(ctx, t)
	if o.err != nil {
		return
	}
	e := o.eval
	o.attempt, _ = asynq.GetRetryCount(ctx)
	ttl := e.LeaseTTL(w.cfg.LeaseTTL)
	lease, err := w.acquire(ctx, o.sp, e, ttl)
	switch {
	case errors.Is(err, pool.ErrCancelled) || err != nil && ctx.Err() != nil && w.cancelled(ctx, o.sp, e):
		o.cancelled, o.err = true, noRetry(fmt.Errorf("eval %s: cancelled", e.ID))
		return
	case errors.Is(err, pool.ErrNoExecutor):
		o.err = err
		return
	case err != nil:
		o.err = fmt.Errorf("eval %s: %w", e.ID, err)
		return
	}
	o.lease = lease
	o.log = w.log.With().Str("eval", e.ID).Str("executor", lease.URL).Int64("fence", lease.Fence).Int("attempt", o.attempt).Logger()
	o.log.Debug().Bool("reentered", lease.Reentered).Msg("eval leased an executor")
	if e.Run != "" {
		if err := w.runs.Started(ctx, e.Run, e.Key, lease.URL); err != nil {
			o.log.Warn().Err(err).Msg("could not note the eval running in its run")
		}
	}
	start := time.Now()
	o.res, o.err = w.runOnLease(ctx, o.sp, e, lease, ttl)
	o.took = time.Since(start)
	w.noteClock(ctx, lease.URL)
	w.judge(ctx, o)
}

// evalOf reads an eval task, and the served pool it names.
func (w *Worker) evalOf(ctx context.Context, t *asynq.Task) (tasks.Eval, *servedPool, error) {
	e, err := tasks.ParseEval(t.Payload())
	if err != nil {
		return e, nil, noRetry(err)
	}
	if id, ok := asynq.GetTaskID(ctx); ok && id != e.ID {
		// The pool keys leases by eval ID: two tasks sharing one would
		// re-enter each other's lease.
		return e, nil, noRetry(fmt.Errorf("%w: eval %s: its task ID is %s; an eval's task ID must be its eval ID", tasks.ErrBadPayload, e.ID, id))
	}
	sp, err := w.servedFor(ctx, e.Pool)
	if err != nil {
		return e, nil, noRetry(err)
	}
	return e, sp, nil
}

// judge says what the executor's answer makes of the attempt: its error,
// its result when the eval ended, whether it was cancelled, the verdict on
// the executor, and whether the eval will be tried again.
func (w *Worker) judge(ctx context.Context, o *outcome) {
	if o.err == nil {
		w.handBacks.reset(o.lease.URL)
	}
	if o.err == nil && o.res.Status == executor.StatusErrored {
		o.err = fmt.Errorf("eval %s: %w: %s", o.eval.ID, ErrErrored, erroredWhy(o.res))
	}
	if ends := o.err == nil || errors.Is(o.err, ErrErrored) && !w.retries(ctx, o.err); ends {
		var err error
		o.result, err = encodeResult(tasks.EvalResult{
			EvalID: o.eval.ID, Executor: o.lease.URL, Fence: o.lease.Fence, Attempt: o.attempt,
			Status: o.res.Status, Score: o.res.Score, Metrics: o.res.Metrics, Output: o.res.Output, Duration: o.took.Seconds(),
			Diagnostics: o.res.Diagnostics,
		})
		o.err = cmp.Or(o.err, err)
	}
	if o.cancelled = o.err != nil && ctx.Err() != nil && w.cancelled(ctx, o.sp, o.eval); o.cancelled {
		o.err = noRetry(fmt.Errorf("eval %s: cancelled: %w", o.eval.ID, o.err))
	}
	o.verdict = verdictOf(o.res, o.err)
	o.retrying = o.err != nil && w.retries(ctx, o.err)
}

// report tells what the attempt came to: in the metrics, the log, and its
// run's record. A run's eval's result is kept in its run's record, once:
// the task keeps it only when the run could not take it now, for the reap's
// reconciliation to find there.
func (w *Worker) report(ctx context.Context, o *outcome) {
	switch {
	case o.sp == nil:
		// Labelled by the queue's pool, never the payload's: a hostile
		// payload must not grow the metric's label set.
		q, _ := asynq.GetQueueName(ctx)
		owner, _ := tasks.PoolOfQueue(q)
		w.cfg.Metrics.evals.WithLabelValues(owner, "bad_payload").Inc()
		return
	case !o.leased() && o.cancelled:
		w.cfg.Metrics.evals.WithLabelValues(o.eval.Pool, "cancelled").Inc()
		w.endEval(ctx, o.eval, run.Record{Status: run.Cancelled})
		return
	case !o.leased() && errors.Is(o.err, pool.ErrNoExecutor):
		w.cfg.Metrics.evals.WithLabelValues(o.eval.Pool, "no_executor").Inc()
		return
	case !o.leased():
		return
	}
	if o.result == nil && o.eval.Run != "" {
		// Graded, its time comes with its record; else it is noted now.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
		if err := w.runs.AttemptEnded(rctx, o.eval.Run, o.eval.Key, o.lease.URL, o.took); err != nil {
			o.log.Debug().Err(err).Msg("could not note the attempt's end in its run")
		}
		cancel()
	}
	if o.result != nil && w.endEval(ctx, o.eval, recordOf(o.res, o.took, o.attempt, o.lease.URL)) {
		o.result = nil
	}
	kind := o.res.Status
	var hb *handBack
	switch {
	case o.cancelled:
		kind = "cancelled"
		o.log.Info().Err(o.err).Msg("eval cancelled; its call to the executor was abandoned")
		w.endEval(ctx, o.eval, run.Record{Status: run.Cancelled, Executor: o.lease.URL, Retries: o.attempt})
	case errors.As(o.err, &hb):
		kind = hb.outcome // logged at error level with its cause and fix
	case errors.Is(o.err, ErrErrored):
		kind = run.Errored
		o.log.Warn().Err(o.err).Dur("took", o.took).Bool("retrying", o.retrying).Msg("eval errored: its grader failed, not its executor")
	case errors.Is(o.err, executor.ErrBusy):
		kind = "busy"
		o.log.Error().Err(o.err).Msg("the executor refused the eval: another eval holds it under a live lease, so the pool handed it out twice (Redis lost writes, or one executor is registered twice); the eval will try again")
	case o.err != nil:
		kind = "error"
		o.log.Warn().Err(o.err).Dur("took", o.took).Msg("eval attempt failed")
	default:
		o.log.Info().Str("status", o.res.Status).Dur("took", o.took).Msg("eval done")
	}
	w.cfg.Metrics.evals.WithLabelValues(o.eval.Pool, kind).Inc()
	w.cfg.Metrics.duration.WithLabelValues(o.eval.Pool, kind).Observe(o.took.Seconds())
	if o.verdict != pool.VerdictNone {
		w.cfg.Metrics.verdicts.WithLabelValues(o.sp.pool.Name(), o.lease.URL, string(o.verdict)).Inc()
	}
}

// endLease ends a reported attempt's lease, keeping its result on the task
// on the way, and returns the attempt's error: nil when it succeeded.
type endLease func(ctx context.Context, t *asynq.Task, o *outcome) error

// endLeaseBy makes mode the worker's release policy.
func (w *Worker) endLeaseBy(mode CleanupMode) {
	end := endLease(w.releaseInline)
	if mode != CleanupInline {
		end = w.cleanupTasks(mode == CleanupBoth)
	}
	w.endLease.Store(&end)
}

// cleanupTasks ends a lease by cleanup tasks, which a cleanup server runs:
// the cleanup of the attempt's outcome (success or failure), or both. The
// result is written first. The error handler adds a failure cleanup for a
// failed attempt.
func (w *Worker) cleanupTasks(both bool) endLease {
	return func(ctx context.Context, t *asynq.Task, o *outcome) error {
		err := o.err
		if o.result != nil {
			switch werr := w.writeResult(ctx, t, o.eval.ID, o.result); {
			case werr != nil && err == nil:
				err = werr
				o.retrying = w.retries(ctx, err)
			case werr != nil:
				o.log.Warn().Err(werr).Msg("could not keep the errored eval's result")
			}
		}
		c := o.cleanup()
		if err == nil || both {
			c.Path = tasks.PathSuccess
			w.enqueueCleanup(ctx, tasks.TypeCleanupSuccess, c)
		}
		if err != nil || both {
			c.Path = tasks.PathFailure
			if err != nil {
				c.Error = err.Error()
			}
			w.enqueueCleanup(ctx, tasks.TypeCleanupFailure, c)
		}
		return err
	}
}

// releaseInline releases the attempt's executor in its own handler (path
// inline), and enqueues the cleanup of its outcome only when that release
// fails: one Redis round trip instead of a task. A result not yet written
// goes in the same round trip, ahead of the release; if it cannot be
// written, the attempt fails with that error. The error handler still
// enqueues its failure cleanup for a failed attempt.
func (w *Worker) releaseInline(ctx context.Context, t *asynq.Task, o *outcome) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
	defer cancel()
	lease, result := o.lease, o.result
	args := pool.ReleaseArgs{Path: tasks.PathInline, Verdict: o.verdict, Retrying: o.retrying, ByCleanup: true}
	var written *redis.Cmd
	if queue, ok := asynq.GetQueueName(ctx); ok && result != nil {
		args.Pipelined = func(pipe redis.Pipeliner) {
			written = lua.WriteResult.EvalSha(rctx, pipe, []string{tasks.ResultKey(queue, t.ResultWriter().TaskID())}, result)
		}
	}
	var writeErr error
	if result != nil && args.Pipelined == nil {
		writeErr = w.writeResult(ctx, t, lease.EvalID, result)
	}
	r, err := o.sp.pool.Release(rctx, lease, args)
	switch {
	case written == nil:
	case written.Err() != nil && strings.HasPrefix(written.Err().Error(), "NOSCRIPT"):
		writeErr = w.writeResult(rctx, t, lease.EvalID, result) // loads it
	case written.Err() != nil:
		writeErr = fmt.Errorf("eval %s: write result: %w", lease.EvalID, written.Err())
	case written.Val() == int64(0):
		w.noteTaskGone(lease.EvalID)
	}
	if err == nil {
		o.log.Debug().Str("outcome", string(r.Outcome)).Msg("released inline")
		return cmp.Or(writeErr, o.err)
	}
	o.log.Warn().Err(err).Msg("inline release failed; a cleanup task will release it")
	c := o.cleanup()
	typ := tasks.TypeCleanupSuccess
	c.Path = tasks.PathSuccess
	if o.err != nil || writeErr != nil {
		typ, c.Path, c.Error = tasks.TypeCleanupFailure, tasks.PathFailure, errors.Join(o.err, writeErr).Error()
	}
	w.enqueueCleanup(ctx, typ, c)
	return cmp.Or(writeErr, o.err)
}
