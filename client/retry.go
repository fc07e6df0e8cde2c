package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// ErrTaskGone means an eval to retry has no Asynq task left to take its
// spec from: a run's eval's task is kept tasks.RunTaskRetention (1 h by
// default) once it ended, the run itself far longer. RetryOptions.Suite
// gives the specs back.
var ErrTaskGone = errors.New("eval task gone")

// RetryOptions choose what RetryRun retries. The zero value retries every
// errored and failed eval whose task is still kept.
type RetryOptions struct {
	// Statuses are the ends to retry: run.Errored, run.Failed, or both
	// when empty. Passed and cancelled evals are never retried.
	Statuses []string
	// Suite is the run's suite, as it was submitted (keys are the evals'
	// IDs, else their positions from 1): an eval whose task is gone is
	// enqueued from its line, with its epoch, the run's required labels,
	// the default timeout and retries. Nil refuses such evals (ErrTaskGone).
	Suite []tasks.Eval
}

// Retried is what RetryRun enqueued again, by the status each had ended in.
type Retried struct {
	Errored, Failed int
}

// Evals is how many evals were retried.
func (r Retried) Evals() int { return r.Errored + r.Failed }

// RetryRun runs again, inside run name, its ended evals whose status is
// one of opts.Statuses, under the same eval IDs (NAME/KEY): the run's
// summary, results, compare and followers see their new ends. A run still
// running is fine: only its ended evals are looked at.
//
// Every eval to retry needs its spec: the payload of its Asynq task, or
// its line of opts.Suite when the task is gone; any left without one
// refuses the retry (ErrTaskGone), before anything changed. A task still
// active though its run has its end is waited for, up to endingFor: its
// worker records the end before it returns. Then, a batch
// at a time: the old tasks are deleted (an ID stays taken while its task
// is kept), the evals reopened in the run (run.Store.Reopen), and queued
// again for admission with the old task's payload, as the run's other
// evals: reopened first, so that no end comes before the run takes it. A
// queue that fails has the evals reopened but not queued finished again
// with their old records, so that none is left pending for ever; the error
// says how many. An unknown run is run.ErrNotFound; a run another retry holds
// (run.Store.LockRetry), run.ErrRetrying; nothing to retry is no error.
func RetryRun(ctx context.Context, aq *asynq.Client, insp *asynq.Inspector, p *pool.Pool, runs *run.Store, name string, opts RetryOptions) (Retried, error) {
	var out Retried
	statuses := opts.Statuses
	if len(statuses) == 0 {
		statuses = []string{run.Errored, run.Failed}
	}
	for _, st := range statuses {
		if st != run.Errored && st != run.Failed {
			return out, fmt.Errorf("%w: retry run %s: status %q: want errored or failed", run.ErrInvalid, name, st)
		}
	}
	unlock, err := runs.LockRetry(ctx, name)
	if err != nil {
		return out, err
	}
	defer unlock()
	r, recs, _, err := runs.Records(ctx, name)
	if err != nil {
		return out, err
	}
	if r.Pool != p.Name() {
		return out, fmt.Errorf("%w: run %s is of pool %s, not %s", run.ErrInvalid, name, r.Pool, p.Name())
	}
	suite, err := suiteOf(name, opts.Suite)
	if err != nil {
		return out, err
	}
	queue := tasks.Queues(p.Name()).Evals
	var (
		picked []run.Record
		specs  = map[string][]byte{}
		gone   int
	)
	for _, rec := range recs {
		if !slices.Contains(statuses, rec.Status) {
			continue
		}
		spec, err := retrySpec(ctx, insp, p.Name(), r, rec, suite)
		if errors.Is(err, ErrTaskGone) {
			gone++
			continue
		}
		if err != nil {
			return out, fmt.Errorf("retry run %s: %w", name, err)
		}
		picked, specs[rec.Key] = append(picked, rec), spec
	}
	if gone > 0 {
		return out, fmt.Errorf("%w: retry run %s: the tasks of %d of its evals to retry are gone (a run's eval task is kept %s once it ended by default): give the run's suite to enqueue them from; nothing was retried", ErrTaskGone, name, gone, tasks.RunTaskRetention)
	}
	for start := 0; start < len(picked); start += retryBatch {
		chunk := picked[start:min(start+retryBatch, len(picked))]
		evalKeys := make([]string, len(chunk))
		for i, rec := range chunk {
			evalKeys[i] = rec.Key
			if err := insp.DeleteTask(queue, run.EvalID(name, rec.Key)); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
				return out, fmt.Errorf("retry run %s: eval %s: delete its ended task: %w", name, rec.Key, err)
			}
		}
		reopened, err := runs.Reopen(ctx, r, evalKeys, statuses...)
		left := map[string]bool{}
		for _, key := range reopened {
			left[key] = true
		}
		var queued []string
		var payloads [][]byte
		for _, rec := range chunk {
			if left[rec.Key] { // else ended otherwise meanwhile: left as it is
				queued, payloads = append(queued, rec.Key), append(payloads, specs[rec.Key])
			}
		}
		if err == nil {
			err = runs.Queue(ctx, r, queued, payloads)
		}
		if err != nil {
			restored := restore(ctx, runs, name, chunk, left)
			return out, fmt.Errorf("retry run %s: %d evals retried, then: %w (%d of %d reopened but not queued ended again as they were)", name, out.Evals(), pool.RedisFull(err), restored, len(left))
		}
		for _, rec := range chunk {
			switch {
			case !left[rec.Key]:
			case rec.Status == run.Errored:
				out.Errored++
			default:
				out.Failed++
			}
		}
	}
	if _, err := Admit(ctx, aq, insp, p, runs); err != nil {
		return out, fmt.Errorf("retry run %s: %d evals retried, and wait for a worker to admit them: %w", name, out.Evals(), err)
	}
	return out, nil
}

// retryBatch is how many evals RetryRun reopens in one script.
const retryBatch = 1000

// restore finishes again, with their old records, the evals of chunk
// reopened (left) but not enqueued; it returns how many it could.
func restore(ctx context.Context, runs *run.Store, name string, chunk []run.Record, left map[string]bool) int {
	// Best effort, and bounded: Redis may be what failed.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	n := 0
	for _, rec := range chunk {
		if !left[rec.Key] {
			continue
		}
		if ok, err := runs.Finish(ctx, name, rec); err == nil && ok {
			n++
		}
	}
	return n
}

// endingFor is how long a retry waits for an eval's task to leave the
// active state once its run has its end: the worker records the end, then
// ends its lease and admits the run's next evals before Asynq completes
// the task.
const endingFor = 10 * time.Second

// retrySpec is the payload that runs rec's eval again: its old task's,
// else its suite line's; ErrTaskGone when neither. Its task's options are
// the run's, as for its first run.
func retrySpec(ctx context.Context, insp *asynq.Inspector, poolName string, r run.Run, rec run.Record, suite map[string]tasks.Eval) ([]byte, error) {
	id := run.EvalID(r.Name, rec.Key)
	info, err := endedTask(ctx, insp, poolName, id)
	if errors.Is(err, ErrEvalNotFound) {
		e, ok := suite[rec.SampleKey()]
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrTaskGone, id)
		}
		if e.Group != rec.Group {
			return nil, fmt.Errorf("%w: eval %s: the suite puts it in group %q, the run has it in %q: not the suite the run was submitted from", tasks.ErrBadPayload, id, e.Group, rec.Group)
		}
		e.Run, e.Key, e.ID, e.Epoch, e.Pool = r.Name, rec.Key, id, rec.Epoch, poolName
		if len(r.Require) > 0 {
			e.Require = maps.Clone(e.Require)
			if e.Require == nil {
				e.Require = map[string]string{}
			}
			maps.Copy(e.Require, r.Require)
		}
		t, err := tasks.NewEval(e, tasks.EvalOptions{})
		if err != nil {
			return nil, err
		}
		return t.Payload(), nil
	}
	if err != nil {
		return nil, err
	}
	if info.State != asynq.TaskStateCompleted && info.State != asynq.TaskStateArchived {
		return nil, fmt.Errorf("eval %s: its task is %s, not ended (retried already?)", id, info.State)
	}
	return info.Payload, nil
}

// endedTask looks up eval id's task, waiting up to endingFor while it is
// active.
func endedTask(ctx context.Context, insp *asynq.Inspector, poolName, id string) (*asynq.TaskInfo, error) {
	wait, cancel := context.WithTimeout(ctx, endingFor)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := Lookup(insp, poolName, id)
		if err != nil || info.State != asynq.TaskStateActive {
			return info, err
		}
		select {
		case <-wait.Done():
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("eval %s: wait for its task to end: %w", id, err)
			}
			return nil, fmt.Errorf("eval %s: its task is still active %s after its run recorded its end: is its worker stuck?", id, endingFor)
		case <-tick.C:
		}
	}
}

// suiteOf indexes a run's suite by key: its eval ID, else its position
// from 1, as Submit keys it.
func suiteOf(name string, evals []tasks.Eval) (map[string]tasks.Eval, error) {
	suite := make(map[string]tasks.Eval, len(evals))
	for i, e := range evals {
		key := cmp.Or(e.ID, strconv.Itoa(i+1))
		if _, dup := suite[key]; dup {
			return nil, fmt.Errorf("%w: retry run %s: the suite has the key %q twice", tasks.ErrBadPayload, name, key)
		}
		suite[key] = e
	}
	return suite, nil
}
