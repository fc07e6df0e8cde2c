package worker

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// cleanupPolls paces the cleanup servers' polls. An executor stays leased
// until its cleanup runs, so while the worker runs evals its cleanup servers
// look at their queues every CleanupPollInterval; an idle worker's cleanups
// can wait, and its servers together make one round of dequeues per
// CleanupIdlePollInterval instead of fifty a second.
//
// Asynq's poll interval is fixed per server, and its dequeue loop sleeps
// where nothing can wake it. So the servers poll fast, on a Redis client of
// their own whose hook holds each dequeue while the worker is idle, until a
// round is due or the worker wakes: an eval starts, a cleanup is enqueued,
// the worker stops. Every cleanup of an eval is enqueued by the worker that
// ran it, so a worker with cleanups to run is never idle; a cleanup retried,
// or one another worker could not run, waits at most one idle round. The
// hook knows a dequeue as Asynq's one script that names a queue's paused
// key: were that to change, the polls would stay fast, and
// TestIdleWorkerIsQuiet would say so.
type cleanupPolls struct {
	idle time.Duration
	// paused are the paused keys of the queues the cleanup servers serve,
	// and round how many dequeues one round of them makes.
	paused []string
	round  int
	busy   func() bool

	mu     sync.Mutex
	warm   time.Time // polls stay fast until then: a cleanup was enqueued
	next   time.Time // when the next idle round is due
	tokens int       // dequeues left in the current idle round
	wake   chan struct{}
}

// warmFor is how long polls stay fast after a cleanup is enqueued: ample
// for it to be dequeued, even on a loaded machine.
const warmFor = time.Second

func newCleanupPolls(idle time.Duration, paused []string, busy func() bool) *cleanupPolls {
	return &cleanupPolls{idle: idle, paused: paused, round: len(paused), busy: busy, wake: make(chan struct{})}
}

// poke wakes a held dequeue to look at busy again.
func (g *cleanupPolls) poke() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.wake)
	g.wake = make(chan struct{})
}

// enqueued notes a cleanup just enqueued: polls are fast until it is run.
func (g *cleanupPolls) enqueued() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.warm = time.Now().Add(warmFor)
	g.mu.Unlock()
	g.poke()
}

// await returns when a dequeue may go.
func (g *cleanupPolls) await() {
	for {
		g.mu.Lock()
		now := time.Now()
		if now.Before(g.warm) || g.busy() {
			// The first idle round comes one idle interval after the last
			// fast poll.
			g.next, g.tokens = now.Add(g.idle), 0
			g.mu.Unlock()
			return
		}
		if !now.Before(g.next) {
			g.next, g.tokens = now.Add(g.idle), g.round
		}
		if g.tokens > 0 {
			g.tokens--
			g.mu.Unlock()
			return
		}
		wake, due := g.wake, time.NewTimer(g.next.Sub(now))
		g.mu.Unlock()
		select {
		case <-wake:
		case <-due.C:
		}
		due.Stop()
	}
}

func (g *cleanupPolls) DialHook(next redis.DialHook) redis.DialHook { return next }

func (g *cleanupPolls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		// Only EVALSHA: go-redis falls back to EVAL when Redis lost the
		// script, and that second try of the same dequeue goes at once.
		if cmd.Name() == "evalsha" && slices.ContainsFunc(cmd.Args(), g.names) {
			g.await()
		}
		return next(ctx, cmd)
	}
}

// names reports whether a command's argument is a paused key of the
// cleanup servers' queues.
func (g *cleanupPolls) names(arg any) bool {
	s, ok := arg.(string)
	return ok && slices.Contains(g.paused, s)
}

func (g *cleanupPolls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// pausedKey is the key Asynq marks a paused queue with, which its dequeue
// script names.
func pausedKey(queue string) string { return "asynq:{" + queue + "}:paused" }
