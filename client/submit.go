package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/labels"
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
	// Options are the evals' retries.
	Options tasks.EvalOptions
}

// Submit checks every eval of a run, and that some executor of p can
// serve each, before anything is written; then records the run and enqueues
// its evals. It returns the run as recorded. A name in use is
// run.ErrExists; an eval no executor could serve, pool.ErrUnservable.
func Submit(ctx context.Context, aq *asynq.Client, p *pool.Pool, runs *run.Store, req RunRequest) (run.Run, error) {
	r := run.Run{Name: cmp.Or(req.Name, "run-"+time.Now().UTC().Format("20060102-150405")), Pool: p.Name(), CreatedAt: time.Now(), Require: req.Require}
	if err := run.ValidateName(r.Name); err != nil {
		return run.Run{}, err
	}
	if len(req.Evals) == 0 {
		return run.Run{}, fmt.Errorf("%w: run %s has no evals", tasks.ErrBadPayload, r.Name)
	}
	if err := labels.Validate(req.Require); err != nil {
		return run.Run{}, fmt.Errorf("%w: run %s: %w", tasks.ErrBadPayload, r.Name, err)
	}
	batch := make([]*asynq.Task, len(req.Evals))
	seen := map[string]int{}
	servable := map[string]bool{}
	for i, e := range req.Evals {
		key := cmp.Or(e.ID, strconv.Itoa(i+1))
		if prev, dup := seen[key]; dup {
			return run.Run{}, fmt.Errorf("%w: run %s: eval %d has the key %q of eval %d", tasks.ErrBadPayload, r.Name, i+1, key, prev)
		}
		seen[key] = i + 1
		e.Run, e.Key, e.ID, e.Pool = r.Name, key, run.EvalID(r.Name, key), p.Name()
		e.TimeoutS = tasks.TimeoutSeconds(cmp.Or(req.Timeout, tasks.DefaultTimeout))
		if len(req.Require) > 0 {
			e.Require = maps.Clone(e.Require)
			if e.Require == nil {
				e.Require = map[string]string{}
			}
			maps.Copy(e.Require, req.Require)
		}
		t, err := tasks.NewEval(e, req.Options)
		if err != nil {
			return run.Run{}, fmt.Errorf("run %s: eval %d: %w", r.Name, i+1, err)
		}
		batch[i] = t
		r.Keys = append(r.Keys, key)
		if set := labels.Name(e.Require); set != "" && !servable[set] {
			ok, err := p.CanServe(ctx, e.Require)
			if err != nil {
				return run.Run{}, err
			}
			if !ok {
				return run.Run{}, fmt.Errorf("run %s: eval %s requires %s, which no executor registered in pool %s has: %w", r.Name, key, set, p.Name(), pool.ErrUnservable)
			}
			servable[set] = true
		}
	}
	if err := runs.Create(ctx, r); err != nil {
		return run.Run{}, err
	}
	for i, t := range batch {
		if _, err := aq.EnqueueContext(ctx, t); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return r, fmt.Errorf("run %s: enqueue eval %s (%d of %d; those before it are enqueued, and run cancel stops them): %w", r.Name, r.Keys[i], i+1, len(batch), err)
		}
	}
	r.Size = len(r.Keys)
	return r, nil
}
