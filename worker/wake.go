package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/pool"
)

// wakes hands the grants the pool pushes to this worker's wake list to the
// attempts waiting for them: one blocking connection per pool and worker,
// however many attempts wait, so that waiting costs no Redis call at all
// until an executor is handed over.
type wakes struct {
	pool *pool.Pool
	key  string
	log  zerolog.Logger

	mu sync.Mutex
	// waiting holds, by eval ID, where its grants go. They go by pointer:
	// every attempt that acquires registers, and a buffer of leases would
	// cost each of them the room of four, though few ever wait.
	waiting map[string]chan *pool.Lease
}

func newWakes(p *pool.Pool, worker string, log zerolog.Logger) *wakes {
	return &wakes{pool: p, key: p.WakeKey(worker), log: log, waiting: map[string]chan *pool.Lease{}}
}

// expect registers evalID as waiting, before it asks the pool, so that no
// grant can come before anyone listens; done unregisters it with the
// channel expect returned.
func (ws *wakes) expect(evalID string) chan *pool.Lease {
	ch := make(chan *pool.Lease, 4)
	ws.mu.Lock()
	ws.waiting[evalID] = ch
	ws.mu.Unlock()
	return ch
}

// done unregisters the wait of evalID on grants, unless a later wait of the
// same eval replaced it.
func (ws *wakes) done(evalID string, grants chan *pool.Lease) {
	ws.mu.Lock()
	if ws.waiting[evalID] == grants {
		delete(ws.waiting, evalID)
	}
	ws.mu.Unlock()
}

// listen pops grants off the wake list until ctx ends, on a connection of
// its own: a blocked connection of the shared pool would stall heartbeats
// and releases. A grant nobody waits for any more (its attempt gave up) is
// dropped: the eval's next acquire re-enters that lease, or it expires.
func (ws *wakes) listen(ctx context.Context, conn redis.UniversalClient) {
	for ctx.Err() == nil {
		v, err := conn.BLPop(ctx, time.Second, ws.key).Result()
		switch {
		case errors.Is(err, redis.Nil), ctx.Err() != nil:
			continue
		case err != nil:
			ws.log.Warn().Err(err).Str("pool", ws.pool.Name()).Msg("wake list unreachable; waiting evals hear of their executors when it is back")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		g, err := pool.ParseGrant(v[1])
		if err != nil {
			ws.log.Error().Err(err).Str("pool", ws.pool.Name()).Msg("unreadable grant on the wake list")
			continue
		}
		ws.mu.Lock()
		ch := ws.waiting[g.EvalID]
		ws.mu.Unlock()
		if ch != nil {
			select {
			case ch <- &g:
			default:
			}
		}
	}
}

// listenWakes starts one blocking connection per served pool, on which this
// worker hears of the executors handed to its waiting evals. The listeners
// outlive ctx until stop: evals still waiting while the servers stop must
// hear of theirs.
func (w *Worker) listenWakes(ctx context.Context) (stop func(), err error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var listeners sync.WaitGroup
	var conns []redis.UniversalClient
	stop = func() {
		cancel()
		listeners.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for _, sp := range w.pools {
		conn, err := blockingConn(w.redis)
		if err != nil {
			stop()
			return nil, err
		}
		conns = append(conns, conn)
		listeners.Go(func() { sp.wakes.listen(ctx, conn) })
	}
	return stop, nil
}

// blockingConn opens a connection of its own to the Redis c talks to, for a
// blocking read.
func blockingConn(c redis.UniversalClient) (redis.UniversalClient, error) {
	switch c := c.(type) {
	case *redis.Client:
		o := *c.Options()
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns = 1, 0, 1
		return redis.NewClient(&o), nil
	case *redis.ClusterClient:
		o := *c.Options()
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns = 1, 0, 1
		return redis.NewClusterClient(&o), nil
	}
	return nil, fmt.Errorf("worker: cannot open a connection of its own from a %T; use a *redis.Client or *redis.ClusterClient", c)
}
