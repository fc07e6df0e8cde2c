package client

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/lua"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// RunRequest is a run to submit: a suite of evals under one name.
type RunRequest struct {
	// Name names the run. Defaults to run-YYYYMMDD-HHMMSS (UTC).
	Name string
	// Evals are its evals: each one's ID is its key in the run (the
	// position, from 1, when empty), Spec its spec, Require its own labels.
	Evals []tasks.Eval
	// Require is added to every eval's.
	Require map[string]string
	// Timeout bounds one attempt. Defaults to tasks.DefaultTimeout.
	Timeout time.Duration
	// Options are the evals' retries, and how long each one's Asynq task
	// is kept once it ended (Options.Retention), which defaults for a
	// run's evals to tasks.RunTaskRetention (1 hour): the run keeps their
	// ends and results itself, for Retention.
	Options tasks.EvalOptions
	// Retention is how long the run, its evals' ends and results, is kept
	// after its last eval ended. Defaults to the store's (run.Options,
	// 7 days); at least 1 s. A resume keeps the run's own.
	Retention time.Duration
	// Resume finishes the submission of a run of this name that was cut
	// short (run.Incomplete): the evals must be those it was submitted
	// with, keys in the same order; each is enqueued again, and those
	// enqueued already are refused by their task ID and left alone.
	Resume bool
	// Meta is what the run is of (model=…, commit=…), kept with it and
	// shown in its summary and exports (run.Run.Meta).
	Meta map[string]string
	// Epochs runs each eval this many times, as the evals KEY#1 …
	// KEY#Epochs of the run (run.EpochKey), for pass@1 and pass@k.
	// Defaults to 1: once, under its own key.
	Epochs int
	// AllowEmptyPool submits the run to a pool with no executor registered
	// yet (they are to come), which is otherwise refused (Servable).
	AllowEmptyPool bool
	// Weight, MaxExecutors and Priority are the run's share of its pool
	// against the other runs in flight (run.Run's; run.Store.Admit).
	Weight       int
	MaxExecutors int
	Priority     string
}

// Submit checks every eval of a run, and that some executor of p can
// serve each, before anything is written; then records the run and its
// evals, which wait in it to be admitted to the pool's queue by the fair
// share (Admit), which it runs. It returns the run as recorded. A name in use is
// run.ErrExists (unless req.Resume); a pool with no executor,
// pool.ErrEmpty (unless req.AllowEmptyPool); an eval no executor could
// serve, pool.ErrUnservable; a Redis at maxmemory, pool.ErrRedisFull. A
// submission cut short after the run was recorded leaves it
// run.Incomplete, with the count enqueued: submit it again with Resume, or
// cancel it.
func Submit(ctx context.Context, aq *asynq.Client, insp *asynq.Inspector, p *pool.Pool, runs *run.Store, req RunRequest) (run.Run, error) {
	r := run.Run{Name: cmp.Or(req.Name, "run-"+time.Now().UTC().Format("20060102-150405")), Pool: p.Name(), CreatedAt: time.Now(), Require: req.Require, Retention: req.Retention,
		Meta: req.Meta, Epochs: max(req.Epochs, 1), Weight: req.Weight, MaxExecutors: req.MaxExecutors, Priority: req.Priority,
		MaxRetry: req.Options.MaxRetry, TaskRetention: cmp.Or(req.Options.Retention, tasks.RunTaskRetention)}
	if req.Retention < 0 || req.Retention > 0 && req.Retention < time.Second {
		return run.Run{}, fmt.Errorf("%w: run %s: retention %s: want at least 1s", tasks.ErrBadPayload, r.Name, req.Retention)
	}
	opts := req.Options
	opts.Retention = cmp.Or(opts.Retention, tasks.RunTaskRetention)
	if err := run.ValidateName(r.Name); err != nil {
		return run.Run{}, err
	}
	if len(req.Evals) == 0 {
		return run.Run{}, fmt.Errorf("%w: run %s has no evals", tasks.ErrBadPayload, r.Name)
	}
	if err := labels.Validate(req.Require); err != nil {
		return run.Run{}, fmt.Errorf("%w: run %s: %w", tasks.ErrBadPayload, r.Name, err)
	}
	if err := run.CheckMeta(req.Meta); err != nil {
		return run.Run{}, fmt.Errorf("run %s: %w", r.Name, err)
	}
	if req.Epochs < 0 || req.Epochs > run.MaxEpochs {
		return run.Run{}, fmt.Errorf("%w: run %s: %d epochs: want 1 to %d", tasks.ErrBadPayload, r.Name, req.Epochs, run.MaxEpochs)
	}
	if err := r.CheckShare(); err != nil {
		return run.Run{}, err
	}
	n := len(req.Evals) * r.Epochs
	batch := make([]*asynq.Task, 0, n)
	ids := make([]string, 0, n)
	evals := make([]tasks.Eval, 0, n)
	seen := map[string]int{}
	for i, e := range req.Evals {
		key := cmp.Or(e.ID, strconv.Itoa(i+1))
		if prev, dup := seen[key]; dup {
			return run.Run{}, fmt.Errorf("%w: run %s: eval %d has the key %q of eval %d", tasks.ErrBadPayload, r.Name, i+1, key, prev)
		}
		seen[key] = i + 1
		e.Pool = p.Name()
		e.TimeoutS = tasks.TimeoutSeconds(cmp.Or(req.Timeout, tasks.DefaultTimeout))
		if len(req.Require) > 0 {
			e.Require = maps.Clone(e.Require)
			if e.Require == nil {
				e.Require = map[string]string{}
			}
			maps.Copy(e.Require, req.Require)
		}
		for epoch := range r.Epochs {
			e.Key = key
			if r.Epochs > 1 {
				e.Key, e.Epoch = run.EpochKey(key, epoch+1), epoch+1
			}
			e.Run, e.ID = r.Name, run.EvalID(r.Name, e.Key)
			t, err := tasks.NewEval(e, opts)
			if err != nil {
				return run.Run{}, fmt.Errorf("run %s: eval %d: %w", r.Name, i+1, err)
			}
			batch, ids, evals = append(batch, t), append(ids, e.ID), append(evals, e)
			r.Keys = append(r.Keys, e.Key)
		}
	}
	if err := Servable(ctx, p, evals, req.AllowEmptyPool); err != nil {
		return run.Run{}, fmt.Errorf("run %s: %w", r.Name, err)
	}
	if !req.Resume {
		if _, _, err := runs.Submission(ctx, r.Name); err == nil {
			return run.Run{}, fmt.Errorf("%w: %s", run.ErrExists, r.Name)
		}
	}
	theirs, err := unclaimed(ctx, insp, runs, p.Name(), ids, batch)
	if err != nil {
		return run.Run{}, fmt.Errorf("run %s: %w; nothing of the run was written", r.Name, err)
	}
	err = runs.Create(ctx, r)
	var ended map[string]bool
	if errors.Is(err, run.ErrExists) && req.Resume {
		if err = resumable(ctx, runs, p, r); err == nil {
			// An eval that ended is not enqueued again: its task may be
			// gone (its retention is shorter than the run's), and the run
			// would run it twice.
			ended, err = runs.EndedKeys(ctx, r.Name)
		}
	}
	if err != nil {
		return run.Run{}, err
	}
	r.Size, r.Submission = len(r.Keys), run.Incomplete
	var queued []string
	var specs [][]byte
	for i, t := range batch {
		// An eval that ended is not queued again: the run would run it
		// twice. One whose task is its own, from before a crash, is in
		// the pool's queue already.
		if !ended[r.Keys[i]] && !theirs[i] {
			queued, specs = append(queued, r.Keys[i]), append(specs, t.Payload())
		}
	}
	if err := runs.Queue(ctx, r, queued, specs); err != nil {
		r.Enqueued = -1
		// Best effort, and bounded: Redis may be what failed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = runs.CutShort(cctx, r.Name, -1)
		return r, fmt.Errorf("run %s: the run is incomplete: submit it again with resume, or cancel it: %w", r.Name, pool.RedisFull(err))
	}
	if err := runs.Submitted(ctx, r.Name); err != nil {
		return r, fmt.Errorf("%w (every eval is queued: submit it again with resume to mark the run complete)", err)
	}
	r.Submission = run.Complete
	if _, err := Admit(ctx, aq, insp, p, runs); err != nil {
		return r, fmt.Errorf("run %s is submitted, and waits for a worker to admit its evals: %w", r.Name, err)
	}
	return r, nil
}

// Readmit enqueues again the evals of p's runs that were admitted but are
// not in its queue: their admitter died before it enqueued them, or
// Redis's data went back; and releases again its evals of no run admitted
// but still held, forgetting those whose task ended or is gone. An eval
// whose task is active with its Asynq lease passed (orphaned: its worker
// died, or wrote its end to a master that failed over) counts as in flight
// no more, so that admission goes on while Asynq recovers it. An eval
// whose task is there otherwise is left alone. A worker runs it at each
// reap.
func Readmit(ctx context.Context, aq *asynq.Client, insp *asynq.Inspector, p *pool.Pool, runs *run.Store) (int, error) {
	admitted, err := runs.Admitted(ctx, p.Name())
	if err != nil {
		return 0, err
	}
	queue, n := tasks.Queues(p.Name()).Evals, 0
	for name, specs := range admitted {
		ids := make([]string, 0, len(specs))
		for key := range specs {
			ids = append(ids, run.EvalID(name, key))
		}
		states, err := taskStates(ctx, runs.Redis(), queue, ids)
		if err != nil {
			return n, err
		}
		var lost []string
		var orphaned []string
		for key, spec := range specs {
			switch states[run.EvalID(name, key)] {
			case "":
				lost = append(lost, spec)
			case stateOrphaned:
				orphaned = append(orphaned, key)
			}
		}
		if err := runs.Unadmit(ctx, name, orphaned...); err != nil {
			return n, err
		}
		if len(lost) == 0 {
			continue
		}
		r, err := runs.Get(ctx, name)
		if err != nil {
			return n, err
		}
		if err := enqueueAdmitted(ctx, aq, r, lost); err != nil {
			return n, err
		}
		n += len(lost)
	}
	released, err := rereleaseHeld(ctx, insp, p, runs)
	return n + released, err
}

// rereleaseHeld releases again p's evals of no run admitted but still
// held, and takes out of flight those whose task ended, is gone or is
// orphaned.
func rereleaseHeld(ctx context.Context, insp *asynq.Inspector, p *pool.Pool, runs *run.Store) (int, error) {
	ids, err := runs.Standalone(ctx, p.Name())
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	queue := tasks.Queues(p.Name()).Evals
	states, err := taskStates(ctx, runs.Redis(), queue, ids)
	if err != nil {
		return 0, err
	}
	var ended []string
	n := 0
	for _, id := range ids {
		switch states[id] {
		case "scheduled":
			ok, err := release(insp, runs.Redis(), queue)(ctx, id)
			if err != nil {
				return n, err
			}
			if ok {
				n++
				continue
			}
			ended = append(ended, id)
		case "", "completed", "archived", stateOrphaned:
			ended = append(ended, id)
		}
	}
	return n, runs.EndStandalone(ctx, p.Name(), ended...)
}

// stateOrphaned is taskStates's for an active task whose Asynq lease
// passed leaseSkew ago: nobody works on it until Asynq's recoverer hands
// it out again.
const stateOrphaned = "orphaned"

// leaseSkew is how long past its lease a task may be before it counts as
// orphaned, since a lease is dated by its worker's clock, which may be
// behind Redis's: hosts that keep time (NTP) differ by far less. Asynq's
// recoverer allows 30 s; admission waits less, as it waits for orphans
// after a failover (TestSentinelFailoverUnderLoad).
const leaseSkew = 10 * time.Second

// taskStates reads the Asynq state of the queue's tasks ids, "" for one
// that is gone, stateOrphaned for an active one whose lease passed
// leaseSkew ago (by Redis's clock), in one pipeline. The keys are Asynq's own (v0.26):
// the task's hash and the queue's leases, by the second they end.
func taskStates(ctx context.Context, rdb redis.UniversalClient, queue string, ids []string) (map[string]string, error) {
	states := make([]*redis.StringCmd, len(ids))
	leases := make([]*redis.FloatCmd, len(ids))
	var clock *redis.TimeCmd
	if _, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		clock = pipe.Time(ctx)
		for i, id := range ids {
			states[i] = pipe.HGet(ctx, tasks.ResultKey(queue, id), "state")
			leases[i] = pipe.ZScore(ctx, tasks.LeaseKey(queue), id)
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make(map[string]string, len(ids))
	for i, id := range ids {
		out[id] = states[i].Val()
		if out[id] == "active" && leases[i].Err() == nil && leases[i].Val() < float64(clock.Val().Add(-leaseSkew).Unix()) {
			out[id] = stateOrphaned
		}
	}
	return out, nil
}

// Admit admits evals of p's runs, and its evals of no run, to its queue by
// the fair share (run.Store.Admit), for the executors in service now.
// Submit and Enqueue run it; so does a worker when an eval ends, and at
// each reap.
func Admit(ctx context.Context, aq *asynq.Client, insp *asynq.Inspector, p *pool.Pool, runs *run.Store) (int, error) {
	c, err := p.Counts(ctx)
	if err != nil {
		return 0, err
	}
	queue := tasks.Queues(p.Name()).Evals
	return runs.Admit(ctx, p.Name(), int(c.Available+c.Leased), run.Admission{
		Enqueue: func(ctx context.Context, r run.Run, specs []string) error {
			return enqueueAdmitted(ctx, aq, r, specs)
		},
		Held:    tasks.HeldKey(queue),
		Release: release(insp, runs.Redis(), queue),
	})
}

// release moves a held eval of the queue to its pending list; false when
// it is gone (cancelled). One another released meanwhile is no error.
func release(insp *asynq.Inspector, rdb redis.UniversalClient, queue string) func(ctx context.Context, id string) (bool, error) {
	return func(ctx context.Context, id string) (bool, error) {
		err := insp.RunTask(queue, id)
		if err == nil {
			return true, nil
		}
		state, serr := rdb.HGet(ctx, tasks.ResultKey(queue, id), "state").Result()
		switch {
		case errors.Is(serr, redis.Nil):
			return false, nil
		case serr == nil && state != "scheduled":
			return true, nil
		}
		return false, fmt.Errorf("release eval %s to the queue: %w", id, pool.RedisFull(err))
	}
}

// enqueueAdmitted puts admitted evals of r on its pool's queue, with the
// run's options; one there already is left as it is.
func enqueueAdmitted(ctx context.Context, aq *asynq.Client, r run.Run, specs []string) error {
	opts := tasks.EvalOptions{MaxRetry: r.MaxRetry, Retention: cmp.Or(r.TaskRetention, tasks.RunTaskRetention)}
	for _, spec := range specs {
		e, err := tasks.ParseEval([]byte(spec))
		if err != nil {
			return err
		}
		t, err := tasks.NewEval(e, opts)
		if err != nil {
			return err
		}
		if _, err := aq.EnqueueContext(ctx, t); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("enqueue eval %s: %w", e.ID, pool.RedisFull(err))
		}
	}
	return nil
}

// ErrEvalIDTaken means an eval's ID is held by a task of other content:
// an eval enqueued apart from the run under the run's ID, NAME/KEY. It is
// run.ErrExists too.
var ErrEvalIDTaken = fmt.Errorf("eval ID taken by another eval: %w", run.ErrExists)

// unclaimed checks, before anything of the run is written, that no task
// holds one of its evals' IDs with other content (sameEval): Asynq refuses
// an enqueue under a taken ID, and the run would take the task there for
// its own eval. Tasks of the same content are the run's own, enqueued
// before a crash: Resume enqueues past them, and own[i] says batch[i] is
// one. One EXISTS per eval, pipelined; a task read only for those that
// exist. ids are batch's.
func unclaimed(ctx context.Context, insp *asynq.Inspector, runs *run.Store, poolName string, ids []string, batch []*asynq.Task) (own []bool, err error) {
	rdb := runs.Redis()
	queue := tasks.Queues(poolName).Evals
	own = make([]bool, len(batch))
	for start := 0; start < len(batch); start += 10_000 {
		chunk := batch[start:min(start+10_000, len(batch))]
		cmds := make([]*redis.IntCmd, len(chunk))
		if _, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := range chunk {
				cmds[i] = pipe.Exists(ctx, tasks.ResultKey(queue, ids[start+i]))
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("look for its evals' IDs: %w", err)
		}
		for i, cmd := range cmds {
			if cmd.Val() == 0 {
				continue
			}
			if err := sameEval(ctx, insp, poolName, chunk[i]); err != nil {
				return nil, err
			}
			own[start+i] = true
		}
	}
	return own, nil
}

// sameEval checks that the task enqueued under t's ID is t's eval: same
// run, key, pool, spec and required labels (its timeout and retries may
// differ, as a resume's flags may). A task gone meanwhile is no conflict.
func sameEval(ctx context.Context, insp *asynq.Inspector, poolName string, t *asynq.Task) error {
	want, err := tasks.ParseEval(t.Payload())
	if err != nil {
		return err
	}
	info, err := Lookup(insp, poolName, want.ID)
	if errors.Is(err, ErrEvalNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	got, err := tasks.ParseEval(info.Payload)
	if err == nil && got.Run == want.Run && got.Key == want.Key && got.Pool == want.Pool &&
		bytes.Equal(compact(got.Spec), compact(want.Spec)) && maps.Equal(got.Require, want.Require) {
		return nil
	}
	return fmt.Errorf("%w: eval %s: a task of other content holds its ID (enqueued apart from the run): delete that eval, or submit the run under another name", ErrEvalIDTaken, want.ID)
}

func compact(spec []byte) []byte {
	var b bytes.Buffer
	if json.Compact(&b, spec) != nil {
		return spec
	}
	return b.Bytes()
}

// resumable checks that the run recorded under r's name is r: same pool,
// same eval keys in the same order.
func resumable(ctx context.Context, runs *run.Store, p *pool.Pool, r run.Run) error {
	was, err := runs.Get(ctx, r.Name)
	if err != nil {
		return err
	}
	if was.Pool != p.Name() || !slices.Equal(was.Keys, r.Keys) {
		return fmt.Errorf("%w: run %s: resume needs the evals it was submitted with (pool %s, %d evals), in the same order", run.ErrInvalid, r.Name, was.Pool, len(was.Keys))
	}
	if !maps.Equal(was.Meta, r.Meta) {
		// What the run is of is kept once, as it was submitted: a resume
		// that says otherwise would be silently ignored.
		return fmt.Errorf("%w: run %s: resume needs the meta it was submitted with (%d entries; see run summary)", run.ErrInvalid, r.Name, len(was.Meta))
	}
	return nil
}

// CancelRun cancels every eval of a run that has not ended, those waiting
// for admission and those a submission cut short never queued included,
// so that the run ends. Every ID is marked cancelled in the pool first (a
// resume enqueues those never enqueued, and they never run); then the
// pending evals are deleted from Asynq and recorded cancelled in their run
// in batches of a script each (run_cancel.lua, run.Store.FinishMany), and
// the others (running, retrying) go through Cancel: 100,000 pending evals
// take seconds, not a round trip or a scan of the queue each.
func CancelRun(ctx context.Context, insp *asynq.Inspector, p *pool.Pool, runs *run.Store, name string) (Cancelled, error) {
	var c Cancelled
	r, err := runs.Get(ctx, name)
	if err != nil {
		return c, err
	}
	if r.Pool != p.Name() {
		return c, fmt.Errorf("%w: run %s is of pool %s, not %s", run.ErrInvalid, name, r.Pool, p.Name())
	}
	ended, err := runs.EndedKeys(ctx, name)
	if err != nil {
		return c, err
	}
	var open, ids []string
	for _, key := range r.Keys {
		if !ended[key] {
			open, ids = append(open, key), append(ids, run.EvalID(r.Name, key))
		}
	}
	if err := p.Cancel(ctx, ids...); err != nil {
		return c, err
	}
	queue := tasks.Queues(p.Name()).Evals
	rdb := runs.Redis()
	var others, gone []string
	for start := 0; start < len(ids); start += cancelBatch {
		end := min(start+cancelBatch, len(ids))
		ks := make([]string, 0, 1+end-start)
		ks = append(ks, pendingKey(queue))
		args := make([]any, 0, end-start)
		for _, id := range ids[start:end] {
			ks, args = append(ks, tasks.ResultKey(queue, id)), append(args, id)
		}
		codes, err := lua.RunCancel.Run(ctx, rdb, ks, args...).Int64Slice()
		if err != nil {
			return c, fmt.Errorf("cancel run %s: %w", name, err)
		}
		var deleted []string
		for i, code := range codes {
			switch code {
			case 1:
				deleted = append(deleted, open[start+i])
			case 0:
				gone = append(gone, open[start+i])
			case 2:
				c.Ended++
			default:
				others = append(others, ids[start+i])
			}
		}
		c.Pending += len(deleted)
		if _, err := runs.FinishMany(ctx, name, deleted, run.Record{Status: run.Cancelled, At: time.Now()}); err != nil {
			return c, err
		}
	}
	// Not in the queue: waiting for admission, never enqueued (a
	// submission cut short) or gone with Redis's data. They never run.
	if _, err := runs.FinishMany(ctx, name, gone, run.Record{Status: run.Cancelled, At: time.Now()}); err != nil {
		return c, err
	}
	c.Pending += len(gone)
	if err := runs.Unqueue(ctx, name); err != nil {
		return c, err
	}
	rest, err := Cancel(ctx, insp, p, runs, others)
	c.Pending, c.Running, c.Ended, c.Unknown = c.Pending+rest.Pending, c.Running+rest.Running, c.Ended+rest.Ended, c.Unknown+rest.Unknown
	return c, err
}

// cancelBatch is how many evals one run_cancel.lua script deletes.
const cancelBatch = 1000

// pendingKey is Asynq's (v0.26) list of queue's pending task IDs.
func pendingKey(queue string) string { return "asynq:{" + queue + "}:pending" }
