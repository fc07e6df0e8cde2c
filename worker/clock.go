package worker

import (
	"context"
	"time"

	"github.com/evalpool/evalpool/pool"
)

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

func (w *Worker) tick(ctx context.Context, name string, sp *servedPool, tick func(context.Context, pool.Clock) (pool.Clock, error)) {
	ctx, cancel := context.WithTimeout(ctx, pool.TickEvery)
	defer cancel()
	last := sp.clock
	c, err := tick(ctx, last)
	if err != nil {
		return // Redis is away: the heartbeat and the tasks say so
	}
	sp.clock = c
	switch {
	case c.Rewound == 0 && c.Back > 0:
		w.log.Warn().Str("pool", name).Dur("back", c.Back).
			Msg("Redis lost its last writes (a failover to a replica a little behind): evals enqueued in that moment may be lost; waiting clients enqueue theirs again")
	case c.Rewound > 0:
		w.cfg.Metrics.rewinds.WithLabelValues(name).Inc()
		w.log.Error().Str("pool", name).Int64("generations_lost", c.Rewound).
			Dur("back", c.Back).
			Msg("Redis's data went back in time (a snapshot restored, or a failover to a replica that lagged): evals enqueued and leases taken since may be lost; waiting clients re-enqueue their runs' missing evals, and `evalpool pool check` reports it for a day")
	}
	if last.Gen != 0 && c.Steps > last.Steps {
		w.cfg.Metrics.clockSteps.WithLabelValues(name).Inc()
		w.log.Warn().Str("pool", name).Dur("step", c.LastStep).Dur("skew", c.Skew).Time("at", c.StepAt).
			Msg("Redis's clock stepped; the pool's time took it out, so no live lease was reclaimed for it (or every worker stopped ticking at once)")
	}
}
