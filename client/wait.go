package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// ErrEvalNotFound means Asynq holds no eval of that ID (never enqueued, or
// its retention has passed).
var ErrEvalNotFound = errors.New("eval not found")

// Outcomes of a finished eval.
const (
	OutcomePassed  = "passed"  // completed, its executor said passed
	OutcomeFailed  = "failed"  // completed, its executor said failed
	OutcomeErrored = "errored" // archived: its attempts failed
)

// Finished is an eval that has ended.
type Finished struct {
	ID      string
	Outcome string
	// Retried counts its failed attempts.
	Retried int
	// Result is what it wrote, for passed and failed evals.
	Result tasks.EvalResult
	// Err is its last error, for errored evals.
	Err string
}

// Lookup finds an eval of a pool in Asynq, where its state, retries and
// result are: evalpool keeps no copy of its own.
func Lookup(insp *asynq.Inspector, pool, id string) (*asynq.TaskInfo, error) {
	info, err := insp.GetTaskInfo(tasks.Queues(pool).Evals, id)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrEvalNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("eval %s: %w", id, err)
	}
	return info, nil
}

// RunResult fills a completed eval's Result from its run's record when
// Asynq holds none: the worker keeps a run's eval's result (its output) in
// the run only, once. A plain eval's, or one whose run is gone, stays as
// it is.
func RunResult(ctx context.Context, runs *run.Store, info *asynq.TaskInfo) error {
	if runs == nil || info.State != asynq.TaskStateCompleted || len(info.Result) > 0 {
		return nil
	}
	e, err := tasks.ParseEval(info.Payload)
	if err != nil || e.Run == "" {
		return nil
	}
	rec, ok, err := runs.Record(ctx, e.Run, e.Key)
	if err != nil || !ok {
		return err
	}
	info.Result, err = json.Marshal(resultOf(e.ID, rec))
	return err
}

// resultOf is the task result a run's record stands for: what a plain
// eval's task would hold.
func resultOf(evalID string, rec run.Record) tasks.EvalResult {
	return tasks.EvalResult{EvalID: evalID, Executor: rec.Executor, Attempt: rec.Retries,
		Status: rec.Status, Score: rec.Score, Output: rec.Output, Duration: rec.Duration,
		Diagnostics: executor.Diagnostics{Error: rec.Error, ExitCode: rec.ExitCode, Stdout: rec.Stdout, Stderr: rec.Stderr}}
}

// Wait is WaitWith for plain evals, stopping at the first error.
func Wait(ctx context.Context, insp *asynq.Inspector, pool string, ids []string, every time.Duration, finished func(Finished), requeue func(ctx context.Context, id string) error) error {
	return WaitWith(ctx, insp, pool, ids, WaitOptions{Every: every, Finished: finished, Requeue: requeue})
}

// DefaultWaitEvery is WaitOptions.Every's default.
const DefaultWaitEvery = 250 * time.Millisecond

// WaitOptions tune WaitWith. The zero value is usable: it polls every
// 250 ms and stops at the first error.
type WaitOptions struct {
	// Runs is where a run's eval's result is read (RunResult). Nil for
	// plain evals.
	Runs *run.Store
	// Every is how often the evals are polled. Defaults to
	// DefaultWaitEvery (250 ms).
	Every time.Duration
	// Finished is called for each eval as it ends. May be nil.
	Finished func(Finished)
	// Requeue, from a producer that holds the evals it waits for, enqueues
	// again an eval not found (Redis's data went back, or was lost), which
	// is then waited for as before. Without it, an eval not found is
	// ErrEvalNotFound.
	Requeue func(ctx context.Context, id string) error
	// Backoff rides out a Redis that fails: each call to it is tried again
	// until it answers, or the context ends. Nil: the first error ends the
	// wait.
	Backoff *Backoff
}

// WaitWith polls Asynq until each eval in ids is completed or archived,
// calling opts.Finished for each as it ends. It returns the context's
// cause, with how many are left, if the context ends first.
func WaitWith(ctx context.Context, insp *asynq.Inspector, pool string, ids []string, opts WaitOptions) error {
	if opts.Every < 0 {
		return fmt.Errorf("wait: the poll interval may not be negative, got %s", opts.Every)
	}
	pending := append([]string(nil), ids...)
	tick := time.NewTicker(cmp.Or(opts.Every, DefaultWaitEvery))
	defer tick.Stop()
	for {
		still := pending[:0]
		for _, id := range pending {
			var info *asynq.TaskInfo
			err := opts.Backoff.Do(ctx, func() error {
				var err error
				if info, err = Lookup(insp, pool, id); err == nil {
					err = RunResult(ctx, opts.Runs, info)
				}
				return err
			})
			if errors.Is(err, ErrEvalNotFound) {
				if _, queued := waiting(ctx, opts.Runs, id); queued {
					still = append(still, id) // not admitted yet
					continue
				}
			}
			if errors.Is(err, ErrEvalNotFound) && opts.Requeue != nil {
				if err := opts.Backoff.Do(ctx, func() error { return opts.Requeue(ctx, id) }); err != nil {
					return err
				}
				still = append(still, id)
				continue
			}
			if err != nil {
				return err
			}
			f := Finished{ID: id, Retried: info.Retried}
			switch info.State {
			case asynq.TaskStateCompleted:
				f.Outcome = OutcomePassed
				if json.Unmarshal(info.Result, &f.Result) == nil && f.Result.Status == executor.StatusFailed {
					f.Outcome = OutcomeFailed
				}
			case asynq.TaskStateArchived:
				f.Outcome, f.Err = OutcomeErrored, info.LastErr
			default:
				still = append(still, id)
				continue
			}
			if opts.Finished != nil {
				opts.Finished(f)
			}
		}
		if pending = still; len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%d of %d evals still running)", context.Cause(ctx), len(pending), len(ids))
		case <-tick.C:
		}
	}
}

// waiting reports whether id is an eval of a run that waits for admission
// (run.Store.Waiting).
// It returns the eval's payload.
func waiting(ctx context.Context, runs *run.Store, id string) ([]byte, bool) {
	name, key, isRun := strings.Cut(id, "/")
	if runs == nil || !isRun {
		return nil, false
	}
	spec, ok, err := runs.Waiting(ctx, name, key)
	return spec, ok && err == nil
}

// StateQueued is the state of an eval waiting for admission to its pool's
// queue: a run's, which Asynq does not know yet, or one of no run, held
// in Asynq (run.HeldFor).
const StateQueued = "queued"

// Cancelled is what Cancel did.
type Cancelled struct {
	// Pending evals were taken off the queue: they never run. Running ones
	// had their attempt cancelled: Asynq's cancelation reaches the handler,
	// which abandons the call (the executor stops the eval) and releases
	// the executor. Ended ones had ended already; Unknown ones were not
	// found.
	Pending, Running, Ended, Unknown int
}

// Cancel cancels evals of a pool by ID. It marks them in the pool
// first (pool.Cancel), so that one Asynq hands to a worker after this never
// gets an executor, then deletes the pending ones, then cancels the running
// ones (in that order: a cancelled attempt frees its worker's slot at once,
// and the next task it takes is refused, not deleted), and records each in
// its run as cancelled.
func Cancel(ctx context.Context, insp *asynq.Inspector, p *pool.Pool, runs *run.Store, ids []string) (Cancelled, error) {
	var c Cancelled
	if err := p.Cancel(ctx, ids...); err != nil {
		return c, err
	}
	queue := tasks.Queues(p.Name()).Evals
	var active []*asynq.TaskInfo
	for _, id := range ids {
		info, err := Lookup(insp, p.Name(), id)
		switch {
		case errors.Is(err, ErrEvalNotFound):
			c.Unknown++
			continue
		case err != nil:
			return c, err
		case info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived:
			c.Ended++
			continue
		case info.State == asynq.TaskStateActive || insp.DeleteTask(queue, id) != nil:
			active = append(active, info) // or it became active meanwhile
			continue
		}
		c.Pending++
		if err := recordCancel(ctx, runs, p.Name(), info); err != nil {
			return c, err
		}
	}
	for _, info := range active {
		if err := insp.CancelProcessing(info.ID); err != nil {
			return c, fmt.Errorf("cancel eval %s: %w", info.ID, err)
		}
		c.Running++
		if err := recordCancel(ctx, runs, p.Name(), info); err != nil {
			return c, err
		}
	}
	return c, nil
}

// recordCancel records a cancelled eval in its run, or takes an eval of
// no run out of flight.
func recordCancel(ctx context.Context, runs *run.Store, pool string, info *asynq.TaskInfo) error {
	e, err := tasks.ParseEval(info.Payload)
	if err != nil {
		return nil
	}
	if e.Run == "" {
		return runs.EndStandalone(ctx, pool, info.ID)
	}
	_, err = runs.Finish(ctx, e.Run, run.Record{Key: e.Key, Status: run.Cancelled, At: time.Now()})
	return err
}
