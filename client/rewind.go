package client

import (
	"context"

	"github.com/evalpool/evalpool/pool"
)

// RewindWatch tells a waiting client that Redis's data went back under it
// (a snapshot restored, a failover to a replica that lagged): the pool's
// generation (pool.Tick), which only grows, fell, or a worker noted a
// rewind since the watch's first look. Evals enqueued before the rewind may
// be gone: a client that has them enqueues them again by their IDs (Submit
// with Resume), which leaves alone those still there.
type RewindWatch struct {
	Pool *pool.Pool

	started      bool
	gen, rewinds int64
}

// Rewound reads the pool's generation and reports whether it went back
// since the last call.
func (w *RewindWatch) Rewound(ctx context.Context) (bool, error) {
	gen, rewinds, err := w.Pool.Generation(ctx)
	if err != nil {
		return false, err
	}
	back := w.started && (gen < w.gen || rewinds > w.rewinds)
	w.started, w.gen, w.rewinds = true, gen, rewinds
	return back, nil
}
