package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// epochWatch remembers a pool's epoch marker, so that a worker notices when
// the pool's data vanishes under it (FLUSHALL, an evicting Redis, a restart
// without persistence): evals would otherwise wait for ever in silence.
type epochWatch struct {
	mu          sync.Mutex
	last        string
	lastMissing time.Time // when a waiting eval last logged the missing pool
}

// watchEpochs is the worker's own maintenance, once per reap interval
// until ctx ends: it migrates a served pool an older release wrote and
// reads every served pool's epoch in one call (pool.Migrate), Redis's eviction
// policy and its memory, records again the eval ends not yet written to
// their runs, and, while Redis is full, reaps the pools itself.
func (w *Worker) watchEpochs(ctx context.Context) {
	t := time.NewTicker(w.cfg.ReapInterval)
	defer t.Stop()
	lastPolicy := ""
	wasFull := w.watchMemory(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch full := w.watchMemory(ctx); {
		case full:
			if !wasFull {
				w.log.Error().Msg("Redis is full (used_memory over maxmemory): no eval starts and nothing is submitted until memory is freed or maxmemory raised; leases are still released and reaped")
			}
			w.reapWhenFull(ctx)
			wasFull = true
		case wasFull:
			w.log.Info().Msg("Redis has memory again")
			wasFull = false
		}
		w.recordEnds(ctx)
		// The policy can change under a running worker (CONFIG SET).
		if policy, err := maxmemoryPolicy(ctx, w.redis); err == nil && policy != lastPolicy {
			if policy != "noeviction" && !w.cfg.AllowEvictingRedis {
				w.log.Error().Str("maxmemory_policy", policy).Msg("Redis's maxmemory-policy changed: it may now evict the pool's keys and lose executors and evals; set it back to noeviction")
			}
			lastPolicy = policy
		}
		for name, sp := range w.pools {
			m, err := sp.pool.Migrate(ctx)
			if err != nil {
				continue // Redis is away or full: the heartbeat and the tasks say so
			}
			migrated, epoch := m.Executors > 0, m.Epoch
			if migrated {
				w.log.Warn().Str("pool", name).Int("executors", m.Executors).Msg("pool migrated: it was written by an older release and is brought to this release's layout in place, its leases in flight kept")
			}
			sp.epoch.mu.Lock()
			last := sp.epoch.last
			sp.epoch.last = epoch
			sp.epoch.mu.Unlock()
			switch {
			case last != "" && epoch == "":
				// Logged before it is counted: whoever sees the count finds the line.
				w.log.Error().Str("pool", name).Msg("pool data lost: its keys vanished (FLUSHALL, eviction, or a Redis restart without persistence); evals wait until executors are registered again with `evalpool pool add`")
				w.cfg.Metrics.poolLost.WithLabelValues(name).Inc()
			case last != "" && epoch != last:
				w.log.Error().Str("pool", name).Msg("pool data lost and created anew: leases held before are gone; check the executors with `evalpool pool status`")
				w.cfg.Metrics.poolLost.WithLabelValues(name).Inc()
			case last == "" && epoch != "" && !migrated:
				w.log.Info().Str("pool", name).Msg("pool created: executors registered")
			}
		}
	}
}

// noteMissing logs, at most once per reap interval for a pool, that an eval
// found the pool without data and waits.
func (w *Worker) noteMissing(sp *servedPool, evalID string) {
	sp.epoch.mu.Lock()
	due := time.Since(sp.epoch.lastMissing) >= w.cfg.ReapInterval
	if due {
		sp.epoch.lastMissing = time.Now()
	}
	sp.epoch.mu.Unlock()
	if due {
		w.log.Error().Str("pool", sp.pool.Name()).Str("eval", evalID).
			Msg("eval waits: the pool has no data (never created, or lost); register executors with `evalpool pool add`")
	}
}

// checkEviction refuses a Redis that may evict keys: the pool's keys have no
// TTL, and an allkeys-* policy drops them under memory pressure, losing
// executors and evals without a word. A Redis that does not let us read the
// policy (managed services often disable CONFIG) gets a warning.
func (w *Worker) checkEviction(ctx context.Context) error {
	policy, err := maxmemoryPolicy(ctx, w.redis)
	switch {
	case err != nil:
		w.log.Warn().Err(err).Msg("cannot read Redis's maxmemory-policy; make sure it is noeviction, or Redis may drop the pool's keys")
		return nil
	case policy == "noeviction":
		return nil
	case w.cfg.AllowEvictingRedis:
		w.log.Warn().Str("maxmemory_policy", policy).Msg("Redis may evict keys, and with them executors and evals; allowed by configuration")
		return nil
	}
	return fmt.Errorf("%w: maxmemory-policy is %s, so Redis may evict the pool's keys and lose executors and evals; set it to noeviction (CONFIG SET maxmemory-policy noeviction), or allow it explicitly (--allow-evicting-redis)", ErrEvictingRedis, policy)
}

// ErrEvictingRedis means the worker refused a Redis whose maxmemory-policy
// may evict keys.
var ErrEvictingRedis = errors.New("worker: redis may evict keys")

// maxmemoryPolicy reads the policy, from every master of a cluster: one
// evicting master is enough to lose a pool.
func maxmemoryPolicy(ctx context.Context, c redis.UniversalClient) (string, error) {
	cluster, ok := c.(*redis.ClusterClient)
	if !ok {
		return policyOf(ctx, c)
	}
	var mu sync.Mutex
	worst := "noeviction"
	err := cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		p, err := policyOf(ctx, m)
		if err != nil {
			return err
		}
		mu.Lock()
		if p != "noeviction" {
			worst = p
		}
		mu.Unlock()
		return nil
	})
	return worst, err
}

func policyOf(ctx context.Context, c redis.Cmdable) (string, error) {
	v, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		return "", fmt.Errorf("read maxmemory-policy: %w", err)
	}
	return strings.ToLower(v["maxmemory-policy"]), nil
}
