package worker

import (
	"context"
	"time"

	"github.com/evalpool/evalpool/pool"
)

// clockWatch is what a worker last saw of a pool's clock (pool.Tick).
type clockWatch struct {
	gen, steps, rewinds int64
}

// tickClocks ticks every served pool once per pool.TickEvery until ctx
// ends: the ticks let the pool take a step of Redis's clock out of its time
// (so that a step never reclaims a live lease), and tell this worker when
// Redis's data went back.
func (w *Worker) tickClocks(ctx context.Context) {
	t := time.NewTicker(pool.TickEvery)
	defer t.Stop()
	for {
		for name, sp := range w.pools {
			w.tick(ctx, name, sp, sp.pool.Tick)
		}
		select {
		case <-ctx.Done():
			for name, sp := range w.pools {
				w.tick(context.WithoutCancel(ctx), name, sp, sp.pool.StopTicking)
			}
			return
		case <-t.C:
		}
	}
}

func (w *Worker) tick(ctx context.Context, name string, sp *served, tick func(context.Context, int64) (pool.Clock, error)) {
	ctx, cancel := context.WithTimeout(ctx, pool.TickEvery)
	defer cancel()
	c, err := tick(ctx, sp.clock.gen)
	if err != nil {
		return // Redis is away: the heartbeat and the tasks say so
	}
	last := sp.clock
	sp.clock = clockWatch{gen: c.Gen, steps: c.Steps, rewinds: c.Rewinds}
	if c.Rewound > 0 {
		w.cfg.Metrics.rewinds.WithLabelValues(name).Inc()
		w.log.Error().Str("pool", name).Int64("generations_lost", c.Rewound).
			Msg("Redis's data went back in time (a snapshot restored, or a failover to a replica that lagged): evals enqueued and leases taken since may be lost; waiting clients re-enqueue their runs' missing evals, and `evalpool pool check` reports it for a day")
	}
	if last.gen != 0 && c.Steps > last.steps {
		w.cfg.Metrics.clockSteps.WithLabelValues(name).Inc()
		w.log.Warn().Str("pool", name).Dur("step", c.LastStep).Dur("skew", c.Skew).Time("at", c.StepAt).
			Msg("Redis's clock stepped; the pool's time took it out, so no live lease was reclaimed for it (or every worker stopped ticking at once)")
	}
}
