package worker

import (
	"cmp"
	"context"
	"sync"
	"time"

	"github.com/hibiken/asynq"
)

// fastCleanupServers is how many Asynq servers look at the cleanup queues
// every CleanupPollInterval while the worker runs evals: a server
// dequeues one task at a time, so cleanups, one or two per eval attempt,
// get that many dequeue loops to keep up.
const fastCleanupServers = 2

// cleanupQuiet is how long the fast cleanup servers outlive the worker's
// last eval attempt: the attempt's cleanup is on the queue by its end, and
// evals that come in bursts do not restart them each time.
const cleanupQuiet = 10 * time.Second

// gear runs the worker's fast cleanup servers while it has eval attempts
// in flight, and cleanupQuiet after the last one ends. A cleanup comes from
// an eval attempt, whose executor stays leased until the cleanup runs, so
// a worker running evals looks at the cleanup queues often; one with none
// running has none of its own coming and leaves that to its slow server
// (PollInterval), which also takes the cleanups' retries and the reaps. An
// idle worker so costs Redis a poll per PollInterval, not one per
// CleanupPollInterval per server.
type gear struct {
	// start makes and starts the fast servers; nil when they are never
	// needed (inline cleanups).
	start func() ([]*asynq.Server, error)
	// failed is told a start that failed: the slow server still serves.
	failed func(error)
	// quiet is how long the fast servers outlive the last attempt.
	// Defaults to cleanupQuiet.
	quiet time.Duration

	mu      sync.Mutex
	servers []*asynq.Server // running, nil when stopped
	closed  bool
	stops   sync.WaitGroup // servers shutting down
}

// busy starts the fast servers, for an eval attempt starting, when they
// are not running.
func (g *gear) busy() {
	if g.start == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.servers != nil || g.closed {
		return
	}
	servers, err := g.start()
	if err != nil {
		g.failed(err)
		return
	}
	g.servers = servers
}

// run stops the fast servers once the worker has run no eval attempt for
// quiet (idleFor, the worker's attempts in flight say), until ctx ends.
func (g *gear) run(ctx context.Context, idleFor func() time.Duration) {
	if g.start == nil {
		return
	}
	quiet := cmp.Or(g.quiet, cleanupQuiet)
	tick := time.NewTicker(quiet / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			g.mu.Lock()
			if g.servers != nil && idleFor() >= quiet {
				g.shutdown()
			}
			g.mu.Unlock()
		}
	}
}

// shutdown stops the running fast servers, in the background: a server
// waits for its running cleanups. g.mu is held.
func (g *gear) shutdown() {
	servers := g.servers
	g.servers = nil
	g.stops.Go(func() {
		for _, s := range servers {
			s.Shutdown()
		}
	})
}

// close stops the fast servers for good and waits until they have stopped.
func (g *gear) close() {
	g.mu.Lock()
	g.closed = true
	if g.servers != nil {
		g.shutdown()
	}
	g.mu.Unlock()
	g.stops.Wait()
}

// running reports whether the fast servers run.
func (g *gear) running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.servers != nil
}
