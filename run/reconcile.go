package run

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

// Lookup says how an eval ended, from outside its run (the worker asks
// Asynq): ended is false while it runs or waits, or when it is unknown.
type Lookup func(ctx context.Context, evalID string) (rec Record, ended bool, err error)

// ReconcileOptions bound one Reconcile call. The zero value is usable.
type ReconcileOptions struct {
	// Runs is how many runs one call looks at, those due longest first.
	// Defaults to 8.
	Runs int
	// Window is how many evals of a run one call looks at, from the first
	// whose end is not recorded. Defaults to 64.
	Window int
	// Every is how long a run waits between two looks. Defaults to 30 s.
	Every time.Duration
}

// Defaults of ReconcileOptions.
const (
	DefaultReconcileRuns   = 8
	DefaultReconcileWindow = 64
	DefaultReconcileEvery  = 30 * time.Second
)

// Reconciled is what one Reconcile call did.
type Reconciled struct {
	// Runs were looked at; Looked evals were asked about (lookup);
	// Recorded ends were recorded; Closed runs left the index, every end
	// recorded.
	Runs, Looked, Recorded, Closed int
}

// Reconcile records the ends a pool's runs missed: an eval whose end could
// not be written when it ended (Redis full, failing over, or its worker
// killed in between) stays running or pending in its run until this
// records how lookup says it ended. The first end recorded still wins.
//
// Its cost is bounded whatever the number of runs: it looks at most at
// opts.Runs runs, each at most every opts.Every, and in each at a window of
// opts.Window evals starting at the first not recorded (a cursor kept in the
// run), calling lookup for those not recorded in it: per call O(Runs ×
// Window) Redis work and lookups, and nothing for runs whose ends are all
// recorded. Evals run in about the order they were submitted, so the window
// follows what is in flight; one still running holds the cursor, and the
// ends beyond the window are found as it moves on.
func (s *Store) Reconcile(ctx context.Context, poolName string, lookup Lookup, opts ReconcileOptions) (Reconciled, error) {
	if lookup == nil || opts.Runs < 0 || opts.Window < 0 || opts.Every < 0 {
		return Reconciled{}, fmt.Errorf("%w: reconcile needs a lookup, and no negative bound", ErrInvalid)
	}
	opts.Runs = cmp.Or(opts.Runs, DefaultReconcileRuns)
	opts.Window = cmp.Or(opts.Window, DefaultReconcileWindow)
	opts.Every = cmp.Or(opts.Every, DefaultReconcileEvery)
	var out Reconciled
	now := time.Now()
	names, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: keys.OpenRuns(poolName), ByScore: true,
		Start: "-inf", Stop: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(opts.Runs)}).Result()
	if err != nil {
		return out, fmt.Errorf("reconcile runs of pool %s: %w", poolName, err)
	}
	for _, name := range names {
		out.Runs++
		looked, recorded, closed, err := s.reconcile(ctx, poolName, name, lookup, opts.Window)
		out.Looked, out.Recorded = out.Looked+looked, out.Recorded+recorded
		if err != nil {
			return out, err
		}
		if closed {
			out.Closed++
			err = s.client.ZRem(ctx, keys.OpenRuns(poolName), name).Err()
		} else {
			err = s.client.ZAdd(ctx, keys.OpenRuns(poolName), redis.Z{Score: float64(now.Add(opts.Every).UnixMilli()), Member: name}).Err()
		}
		if err != nil {
			return out, fmt.Errorf("reconcile run %s: %w", name, lua.Full(err))
		}
	}
	return out, nil
}

// reconcile looks at one window of a run; closed is true when the run is
// gone or every end of it is recorded.
func (s *Store) reconcile(ctx context.Context, poolName, name string, lookup Lookup, window int) (looked, recorded int, closed bool, err error) {
	k := keys.ForRun(name)
	meta, err := s.client.HGetAll(ctx, k.Meta()).Result()
	if err != nil {
		return 0, 0, false, fmt.Errorf("reconcile run %s: %w", name, err)
	}
	if meta["name"] != name || meta["pool"] != poolName {
		return 0, 0, true, nil // expired, or another pool's: nothing to do here
	}
	size, _ := strconv.Atoi(meta["size"])
	from, _ := strconv.Atoi(meta["reconciled"])
	evals, err := s.client.LRange(ctx, k.Evals(), int64(from), int64(from+window-1)).Result()
	if err != nil {
		return 0, 0, false, fmt.Errorf("reconcile run %s: %w", name, err)
	}
	var ended []any
	if len(evals) > 0 {
		if ended, err = s.client.HMGet(ctx, k.Done(), evals...).Result(); err != nil {
			return 0, 0, false, fmt.Errorf("reconcile run %s: %w", name, err)
		}
	}
	next := from + len(evals)
	for i, key := range evals {
		if ended[i] != nil {
			continue
		}
		looked++
		rec, over, err := lookup(ctx, EvalID(name, key))
		if err != nil {
			return looked, recorded, false, fmt.Errorf("reconcile run %s: eval %s: %w", name, key, err)
		}
		if !over {
			next = min(next, from+i)
			continue
		}
		rec.Key = key
		ok, err := s.Finish(ctx, name, rec)
		if err != nil {
			return looked, recorded, false, fmt.Errorf("reconcile: %w", err)
		}
		if ok {
			recorded++
		}
	}
	if next != from {
		if err := s.client.HSet(ctx, k.Meta(), "reconciled", next).Err(); err != nil {
			return looked, recorded, false, fmt.Errorf("reconcile run %s: %w", name, lua.Full(err))
		}
	}
	return looked, recorded, next >= size && cmp.Or(meta["submission"], Complete) == Complete, nil
}
