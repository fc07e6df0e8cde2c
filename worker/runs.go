package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// maxUnrecorded bounds the ends a worker keeps to record again; past it,
// reconciliation (run.Store.Reconcile) records them from Asynq's state.
const maxUnrecorded = 10_000

// unrecorded are the ends of evals that could not be written to their run
// (Redis full, failing over), recorded again at each maintenance tick. A
// worker killed meanwhile loses them: reconciliation finds them then.
type unrecorded struct {
	mu   sync.Mutex
	ends []unrecordedEnd
}

type unrecordedEnd struct {
	run string
	rec run.Record
}

// add keeps an end to record later; it reports false when the list is
// full.
func (u *unrecorded) add(name string, rec run.Record) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.ends) >= maxUnrecorded {
		return false
	}
	u.ends = append(u.ends, unrecordedEnd{name, rec})
	return true
}

func (u *unrecorded) take() []unrecordedEnd {
	u.mu.Lock()
	defer u.mu.Unlock()
	ends := u.ends
	u.ends = nil
	return ends
}

func (u *unrecorded) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ends)
}

// recordEnds records again the ends kept by endEval; those that fail
// again are kept for the next tick.
func (w *Worker) recordEnds(ctx context.Context) {
	ends := w.ends.take()
	for i, e := range ends {
		if _, err := w.runs.Finish(ctx, e.run, e.rec); err != nil {
			for _, left := range ends[i:] {
				w.ends.add(left.run, left.rec)
			}
			w.log.Debug().Err(err).Int("left", len(ends)-i).Msg("eval ends still not recorded in their runs")
			break
		}
		w.cfg.Metrics.runEnds.WithLabelValues("recorded_late").Inc()
	}
	w.cfg.Metrics.unrecorded.Set(float64(w.ends.len()))
}

// reconcileRuns records the ends the pool's runs missed, from Asynq's
// state: the backstop for ends a worker lost (killed, or its list full).
func (w *Worker) reconcileRuns(ctx context.Context, sp *servedPool) {
	r, err := w.runs.Reconcile(ctx, sp.pool.Name(), w.endOf(sp.pool.Name()), run.ReconcileOptions{Every: 3 * w.cfg.ReapInterval})
	w.cfg.Metrics.runEnds.WithLabelValues("reconciled").Add(float64(r.Recorded))
	if err != nil {
		w.log.Warn().Err(err).Str("pool", sp.pool.Name()).Msg("runs not reconciled; the next reap tries again")
		return
	}
	if r.Recorded > 0 {
		w.log.Warn().Str("pool", sp.pool.Name()).Int("recorded", r.Recorded).Int("runs", r.Runs).Msg("recorded eval ends their runs had missed")
	}
}

// endOf is how an eval of the pool ended by Asynq's state: a completed
// task's result, or errored for an archived task (cancelled when the pool
// marked it so).
func (w *Worker) endOf(poolName string) run.Lookup {
	return func(ctx context.Context, evalID string) (run.Record, bool, error) {
		info, err := w.inspector.GetTaskInfo(tasks.Queues(poolName).Evals, evalID)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			return run.Record{}, false, nil
		}
		if err != nil {
			return run.Record{}, false, err
		}
		// The payload is the eval's as it was enqueued: one that does not
		// parse has no group or epoch to give its record.
		e, _ := tasks.ParseEval(info.Payload)
		switch info.State {
		case asynq.TaskStateCompleted:
			var res tasks.EvalResult
			if err := json.Unmarshal(info.Result, &res); err != nil || (res.Status != run.Passed && res.Status != run.Failed) {
				return run.Record{Status: run.Errored, Error: "completed without a readable result", Group: e.Group, Epoch: e.Epoch, Retries: info.Retried, At: info.CompletedAt}, true, nil
			}
			return res.Record(e, info.CompletedAt), true, nil
		case asynq.TaskStateArchived:
			rec := run.Record{Status: run.Errored, Error: info.LastErr, Group: e.Group, Epoch: e.Epoch, Retries: info.Retried, At: info.LastFailedAt}
			// An eval that errored on its last attempt kept that attempt's result.
			if res := (tasks.EvalResult{}); json.Unmarshal(info.Result, &res) == nil && res.Status == run.Errored {
				rec = res.Record(e, info.LastFailedAt)
				rec.Error, rec.Retries = info.LastErr, info.Retried
			}
			if sp := w.pools[poolName]; sp != nil {
				if cancelled, err := sp.pool.Cancelled(ctx, evalID); err == nil && cancelled {
					rec = run.Record{Status: run.Cancelled, Group: e.Group, Epoch: e.Epoch, Retries: info.Retried, At: info.LastFailedAt}
				}
			}
			return rec, true, nil
		}
		return run.Record{}, false, nil
	}
}

// reapWhenFull reaps the pools from the worker itself while Redis is full:
// Asynq can neither enqueue nor hand out the reap task then (both are
// writes), but a reap frees memory and Redis runs it.
func (w *Worker) reapWhenFull(ctx context.Context) {
	for name, sp := range w.pools {
		if n, err := sp.pool.Reap(ctx); err != nil {
			w.log.Warn().Err(err).Str("pool", name).Msg("reap failed while Redis is full")
		} else if n > 0 {
			w.log.Info().Str("pool", name).Int("reclaimed", n).Msg("reaped expired leases while Redis is full")
		}
	}
}

// watchMemory reads Redis's used memory and its limit into the gauges
// (INFO memory: O(1) for Redis) and reports whether Redis is full. A
// cluster reports its fullest master. Any error leaves the gauges as they
// were.
func (w *Worker) watchMemory(ctx context.Context) (full bool) {
	used, limit, err := memoryOf(ctx, w.redis)
	if err != nil {
		w.log.Debug().Err(err).Msg("cannot read Redis's memory")
		return false
	}
	w.cfg.Metrics.redisUsed.Set(float64(used))
	w.cfg.Metrics.redisMax.Set(float64(limit))
	return limit > 0 && used >= limit
}

func memoryOf(ctx context.Context, c redis.UniversalClient) (used, limit int64, err error) {
	cluster, ok := c.(*redis.ClusterClient)
	if !ok {
		return memoryOfOne(ctx, c)
	}
	var mu sync.Mutex
	err = cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		u, l, err := memoryOfOne(ctx, m)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if l > 0 && (limit == 0 || float64(u)/float64(l) > float64(used)/float64(limit)) {
			used, limit = u, l
		}
		return nil
	})
	return used, limit, err
}

func memoryOfOne(ctx context.Context, c redis.Cmdable) (used, limit int64, err error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, 0, fmt.Errorf("read INFO memory: %w", err)
	}
	var seen int
	for line := range strings.Lines(info) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "used_memory":
			used, err = strconv.ParseInt(v, 10, 64)
		case "maxmemory":
			limit, err = strconv.ParseInt(v, 10, 64)
		default:
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("read INFO memory: %s: %w", k, err)
		}
		seen++
	}
	if seen != 2 {
		return 0, 0, errors.New("read INFO memory: no used_memory and maxmemory")
	}
	return used, limit, nil
}

// isFull reports whether err is Redis's refusal at maxmemory.
func isFull(err error) bool { return errors.Is(pool.RedisFull(err), pool.ErrRedisFull) }
