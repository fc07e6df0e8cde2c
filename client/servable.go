package client

import (
	"context"
	"fmt"

	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// Servable checks, before any of evals is enqueued, that an executor
// registered in p could serve each: one lookup for the pool, and one per
// distinct label set required. A pool with no executor at all is
// pool.ErrEmpty, unless allowEmpty (its executors are to come), which then
// takes any eval; an eval whose labels no registered executor has is
// pool.ErrUnservable.
func Servable(ctx context.Context, p *pool.Pool, evals []tasks.Eval, allowEmpty bool) error {
	some, err := p.CanServe(ctx, nil)
	if err != nil {
		return err
	}
	if !some {
		if allowEmpty {
			return nil
		}
		return fmt.Errorf("%w in pool %s: its evals would wait until one is", pool.ErrEmpty, p.Name())
	}
	checked := map[string]bool{}
	for _, e := range evals {
		set := labels.Name(e.Require)
		if set == "" || checked[set] {
			continue
		}
		checked[set] = true
		ok, err := p.CanServe(ctx, e.Require)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("eval %s requires %s, which no executor registered in pool %s has: %w", e.ID, set, p.Name(), pool.ErrUnservable)
		}
	}
	return nil
}
