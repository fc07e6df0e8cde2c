package evalpool

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// ErrNoRedis is a constructor given no Redis client.
var ErrNoRedis = errors.New("evalpool: a Redis client is required")

// ClientConfig configures a Client. The zero value is usable.
type ClientConfig struct {
	// Logger receives the pools' warnings: a double release by hand, an
	// executor quarantined. Defaults to discarding.
	Logger *zerolog.Logger
	// Runs configures the run store. Its zero value keeps a run 7 days
	// after its last eval ended.
	Runs run.Options
	// PoolMetrics counts the operations of the client's pool handles.
	// Defaults to a private set that nobody scrapes.
	PoolMetrics *pool.Metrics
}

// Client is a producer's handle on evalpool: it submits, follows, cancels
// and retries evals and runs, in any pool of its Redis. It holds nothing to
// close: every part shares the Redis client it was made with. It is safe for
// concurrent use.
type Client struct {
	rdb     redis.UniversalClient
	log     zerolog.Logger
	metrics *pool.Metrics
	insp    *asynq.Inspector
	runs    *run.Store
	pools   sync.Map // name -> *pool.Pool
}

// NewClient returns a client on rdb. It does not touch Redis.
func NewClient(rdb redis.UniversalClient, cfg ClientConfig) (*Client, error) {
	if rdb == nil {
		return nil, ErrNoRedis
	}
	c := &Client{rdb: rdb, log: zerolog.Nop(), metrics: cfg.PoolMetrics, insp: asynq.NewInspectorFromRedisClient(rdb), runs: run.NewStore(rdb, cfg.Runs)}
	if cfg.Logger != nil {
		c.log = *cfg.Logger
	}
	return c, nil
}

// Pool is the pool named name, for what operators do: register and remove
// executors, label and quarantine them, read its status and settings, check
// it. The empty name is pool.DefaultName.
func (c *Client) Pool(name string) (*pool.Pool, error) {
	if p, ok := c.pools.Load(name); ok {
		return p.(*pool.Pool), nil
	}
	p, err := pool.New(c.rdb, pool.Options{Name: name, Logger: &c.log, Metrics: c.metrics})
	if err != nil {
		return nil, err
	}
	got, _ := c.pools.LoadOrStore(name, p)
	return got.(*pool.Pool), nil
}

// Runs is the store of runs, for reading them: list, progress, results,
// summaries and comparisons.
func (c *Client) Runs() *run.Store { return c.runs }

// Inspector is Asynq's view of the queues, for tools that speak Asynq
// (Asynqmon, Asynq's queue metrics).
func (c *Client) Inspector() *asynq.Inspector { return c.insp }

// Redis is the client c was made with.
func (c *Client) Redis() redis.UniversalClient { return c.rdb }

// queue is an Asynq client of its own for one call: Asynq's client
// registers a queue's name once per client, and a Redis whose data went
// back (a failover, a restore) has lost the name with the evals that a
// second call enqueues again.
func (c *Client) queue() *asynq.Client { return asynq.NewClientFromRedisClient(c.rdb) }

// SubmitRun checks every eval of a run, and that some executor of the pool
// can serve each, before anything is written; then records the run and
// enqueues its evals (client.Submit says what can go wrong).
func (c *Client) SubmitRun(ctx context.Context, poolName string, req client.RunRequest) (run.Run, error) {
	p, err := c.Pool(poolName)
	if err != nil {
		return run.Run{}, err
	}
	return client.Submit(ctx, c.queue(), c.insp, p, c.runs, req)
}

// EnqueueOptions are the options of evals enqueued by Enqueue.
type EnqueueOptions struct {
	// Eval are the evals' retries and retention.
	Eval tasks.EvalOptions
	// AllowEmptyPool enqueues to a pool with no executor registered yet,
	// which is otherwise pool.ErrEmpty.
	AllowEmptyPool bool
}

// Enqueue enqueues evals outside any run, in order, after checking that
// some executor of the pool can serve each (client.Servable). They share
// the pool as one more run of weight 1: each waits, held in Asynq, for
// admission (run.HeldFor) to put it on the queue. It says of each whether
// it was enqueued now (false: an eval of that ID is enqueued already, and
// is left as it is). Every eval is checked before any is enqueued; an
// error part way says how many were.
func (c *Client) Enqueue(ctx context.Context, poolName string, evals []tasks.Eval, opts EnqueueOptions) ([]bool, error) {
	p, err := c.Pool(poolName)
	if err != nil {
		return nil, err
	}
	batch := make([]*asynq.Task, len(evals))
	for i, e := range evals {
		e.Pool = p.Name()
		if batch[i], err = tasks.NewEval(e, opts.Eval); err != nil {
			return nil, fmt.Errorf("eval %d of %d: %w", i+1, len(evals), err)
		}
	}
	if err := client.Servable(ctx, p, evals, opts.AllowEmptyPool); err != nil {
		return nil, err
	}
	// Redis's clock, not this producer's, dates them: the held evals of
	// every producer are admitted in the order they came.
	now, err := c.rdb.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	aq := c.queue()
	fresh := make([]bool, len(evals))
	for i, t := range batch {
		_, err := aq.EnqueueContext(ctx, t, tasks.Hold(now))
		switch {
		case errors.Is(err, asynq.ErrTaskIDConflict):
		case err != nil:
			return fresh[:i], fmt.Errorf("enqueue eval %s (%d of %d; those before it are enqueued): %w", evals[i].ID, i+1, len(evals), err)
		default:
			fresh[i] = true
		}
	}
	if _, err := client.Admit(ctx, aq, c.insp, p, c.runs); err != nil {
		return fresh, fmt.Errorf("the evals are enqueued, and wait for a worker to admit them: %w", err)
	}
	return fresh, nil
}

// Eval reads an eval of the pool: its state, spec, attempts and result (a
// run's eval's result is its run's record). An unknown ID is
// client.ErrEvalNotFound.
func (c *Client) Eval(ctx context.Context, poolName, id string) (client.Detail, error) {
	return client.Show(ctx, c.insp, c.runs, poolName, id)
}

// Wait follows evals of the pool until each is completed or archived
// (client.WaitWith); opts.Runs defaults to the client's store.
func (c *Client) Wait(ctx context.Context, poolName string, ids []string, opts client.WaitOptions) error {
	if opts.Runs == nil {
		opts.Runs = c.runs
	}
	return client.WaitWith(ctx, c.insp, poolName, ids, opts)
}

// Cancel cancels evals of the pool by ID: pending ones never run, running
// ones stop at their executor and release it (client.Cancel).
func (c *Client) Cancel(ctx context.Context, poolName string, ids []string) (client.Cancelled, error) {
	p, err := c.Pool(poolName)
	if err != nil {
		return client.Cancelled{}, err
	}
	return client.Cancel(ctx, c.insp, p, c.runs, ids)
}

// CancelRun cancels every eval of the run that has not ended, in the run's
// pool (client.CancelRun).
func (c *Client) CancelRun(ctx context.Context, name string) (client.Cancelled, error) {
	p, err := c.runPool(ctx, name)
	if err != nil {
		return client.Cancelled{}, err
	}
	return client.CancelRun(ctx, c.insp, p, c.runs, name)
}

// RetryRun runs the run's errored and failed evals again, inside the run
// (client.RetryRun).
func (c *Client) RetryRun(ctx context.Context, name string, opts client.RetryOptions) (client.Retried, error) {
	p, err := c.runPool(ctx, name)
	if err != nil {
		return client.Retried{}, err
	}
	return client.RetryRun(ctx, c.queue(), c.insp, p, c.runs, name, opts)
}

// runPool is the pool of the run name: a run's evals are its pool's.
func (c *Client) runPool(ctx context.Context, name string) (*pool.Pool, error) {
	r, err := c.runs.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	return c.Pool(r.Pool)
}
