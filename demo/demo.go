// Package demo runs evalpool end to end in one process, for people trying
// it: a Redis (embedded unless one is given), simulated executors over
// loopback HTTP, a worker with both cleanup paths, a batch of evals with
// failures, and a report of what the pool did.
//
// The embedded Redis is miniredis, with its TTL clock on so that Asynq's
// leases and uniqueness locks expire: it keeps nothing and is for trying
// things, never for work that matters.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/redisconn"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// Options configure a demo. The zero value runs the default demo.
type Options struct {
	// RedisURL is the Redis to use, in any form redisconn.Parse reads.
	// Defaults to an embedded, in-process one.
	RedisURL string
	// RedisTLS names the CA and client certificate of a rediss:// RedisURL.
	RedisTLS redisconn.TLSFiles
	// Pool names the pool. Defaults to "demo".
	Pool string
	// Executors is how many simulated executors to start. Defaults to 4.
	Executors int
	// Evals is how many evals to run. Defaults to 200.
	Evals int
	// FailRate is the share of executor calls that fail. Defaults to 0.2.
	FailRate float64
	// Latency is how long a simulated eval takes. Defaults to 20 ms.
	Latency time.Duration
	// Progress is told, as evals end, how many of the run's ended. Defaults
	// to nothing.
	Progress func(ended, total int)
	// Logger receives the worker's logs. Defaults to discarding.
	Logger *zerolog.Logger
}

func (o *Options) validate() error {
	switch {
	case o.Executors < 0, o.Evals < 0:
		return fmt.Errorf("demo: executors and evals may not be negative")
	case o.FailRate < 0 || o.FailRate >= 1:
		return fmt.Errorf("demo: fail rate must be in [0, 1), got %g", o.FailRate)
	case o.Latency < 0:
		return fmt.Errorf("demo: latency may not be negative")
	}
	return nil
}

func (o *Options) withDefaults() {
	if o.Pool == "" {
		o.Pool = "demo"
	}
	if o.Executors == 0 {
		o.Executors = 4
	}
	if o.Evals == 0 {
		o.Evals = 200
	}
	if o.FailRate == 0 {
		o.FailRate = 0.2
	}
	if o.Latency == 0 {
		o.Latency = 20 * time.Millisecond
	}
	if o.Progress == nil {
		o.Progress = func(int, int) {}
	}
}

// Demo is a running demo: Redis, executors and worker, ready for Run.
type Demo struct {
	opts     Options
	log      zerolog.Logger
	mini     *miniredis.Miniredis
	client   redis.UniversalClient
	conn     asynq.RedisConnOpt
	ep       *evalpool.Client
	pool     *pool.Pool
	metrics  *pool.Metrics
	execs    []*refexec.Server
	urls     []string
	servers  []*http.Server
	worker   *evalpool.Worker
	stop     context.CancelFunc
	wg       sync.WaitGroup
	workErr  error
	embedded bool
}

// Start brings up Redis, the executors and a worker.
func Start(ctx context.Context, opts Options) (*Demo, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts.withDefaults()
	d := &Demo{opts: opts, log: zerolog.Nop(), metrics: pool.NewMetrics()}
	if opts.Logger != nil {
		d.log = *opts.Logger
	}
	if err := d.startRedis(ctx); err != nil {
		d.Close()
		return nil, err
	}
	var err error
	if d.ep, err = evalpool.NewClient(d.client, evalpool.ClientConfig{Logger: &d.log, PoolMetrics: d.metrics}); err != nil {
		d.Close()
		return nil, err
	}
	if d.pool, err = d.ep.Pool(opts.Pool); err != nil {
		d.Close()
		return nil, err
	}
	// The demo's executors fail calls at random on purpose (FailRate): they
	// are not dead, and quarantining them would only shrink the demo.
	if err := d.pool.Configure(ctx, pool.Settings{QuarantineAfter: -1}); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.startExecutors(ctx); err != nil {
		d.Close()
		return nil, err
	}
	d.worker, err = evalpool.NewWorker(d.client, evalpool.WorkerConfig{Pools: []string{opts.Pool}, PoolMetrics: d.metrics, Config: worker.Config{
		Concurrency: 2 * opts.Executors, Cleanup: worker.CleanupBoth,
		LeaseTTL: 5 * time.Second, ReapInterval: time.Second, PollInterval: 50 * time.Millisecond,
		NoExecutorDelay: 50 * time.Millisecond, RetryDelay: worker.ExponentialBackoff(50*time.Millisecond, time.Second),
		Logger: &d.log,
	}})
	if err != nil {
		d.Close()
		return nil, err
	}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stop = stop
	d.wg.Go(func() { d.workErr = d.worker.Run(wctx) })
	return d, nil
}

func (d *Demo) startRedis(ctx context.Context) error {
	cfg := redisconn.Config{URL: d.opts.RedisURL, TLS: d.opts.RedisTLS}
	if cfg.URL == "" {
		d.mini = miniredis.NewMiniRedis()
		d.mini.ClockTTL(true)
		if err := d.mini.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("demo: embedded redis: %w", err)
		}
		cfg, d.embedded = redisconn.Config{URL: "redis://" + d.mini.Addr()}, true
	}
	conn, err := redisconn.Parse(cfg)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.client, d.conn = conn.NewClient(), conn.AsynqConnOpt()
	if err := conn.Ping(ctx, d.client); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

func (d *Demo) startExecutors(ctx context.Context) error {
	for range d.opts.Executors {
		s, err := refexec.New(refexec.Options{Latency: d.opts.Latency, FailRate: d.opts.FailRate})
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("demo: executor: %w", err)
		}
		srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		d.wg.Go(func() { _ = srv.Serve(l) })
		url := "http://" + l.Addr().String()
		d.execs, d.urls, d.servers = append(d.execs, s), append(d.urls, url), append(d.servers, srv)
		if _, err := d.pool.Register(ctx, pool.Executor{URL: url, Labels: map[string]string{"kind": "simulated"}}); err != nil {
			return err
		}
	}
	return nil
}

// Embedded reports whether the demo runs on its in-process Redis.
func (d *Demo) Embedded() bool { return d.embedded }

// Client is the demo's producer client.
func (d *Demo) Client() *evalpool.Client { return d.ep }

// AsynqConn connects another Asynq client (Asynqmon) to the demo's Redis.
func (d *Demo) AsynqConn() asynq.RedisConnOpt { return d.conn }

// Pool is the demo's pool.
func (d *Demo) Pool() *pool.Pool { return d.pool }

// Report is what a demo run did.
type Report struct {
	Evals    int `json:"evals"`
	Passed   int `json:"passed"`
	Failed   int `json:"failed"`
	Errored  int `json:"errored"`
	Retried  int `json:"retried"`
	Attempts int `json:"attempts"`
	// Releases counts releases by outcome.
	Releases       map[pool.ReleaseOutcome]int `json:"releases"`
	DoubleReleases int                         `json:"double_releases"`
	// DuplicateReleases counts the releases that were a released lease's
	// other path (the second cleanup, the zombie's replays): absorbed,
	// expected.
	DuplicateReleases int `json:"duplicate_releases"`
	// LateDuplicates counts the zombie releases the demo replayed;
	// LateDuplicatesFreed those that freed an executor (must be 0).
	LateDuplicates      int              `json:"late_duplicates"`
	LateDuplicatesFreed int              `json:"late_duplicates_freed"`
	StaleRefused        int              `json:"stale_refused"`
	Overlaps            int64            `json:"overlaps"`
	ExecutorsLost       int              `json:"executors_lost"`
	Violations          []pool.Violation `json:"violations"`
	Wall                time.Duration    `json:"wall_ns"`
}

// Run enqueues the evals, waits for them and every cleanup to finish, and
// reports.
func (d *Demo) Run(ctx context.Context) (*Report, error) {
	start := time.Now()
	insp := d.ep.Inspector()
	runID := time.Now().Format("150405")
	ids := make([]string, d.opts.Evals)
	evals := make([]tasks.Eval, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("demo-%s-%04d", runID, i)
		spec, _ := json.Marshal(map[string]any{"task": "add", "a": i, "b": i})
		evals[i] = tasks.Eval{ID: ids[i], Spec: spec, TimeoutS: 60}
	}
	if _, err := d.ep.Enqueue(ctx, d.pool.Name(), evals, evalpool.EnqueueOptions{Eval: tasks.EvalOptions{MaxRetry: 2}}); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	ended := 0
	rep := &Report{Evals: len(ids), Releases: map[pool.ReleaseOutcome]int{}}
	zctx, stopZombie := context.WithCancel(ctx)
	var zombie sync.WaitGroup
	zombie.Go(func() { d.replayLateReleases(zctx, insp, rep) })
	defer func() {
		stopZombie()
		zombie.Wait()
	}()
	err := d.ep.Wait(ctx, d.pool.Name(), ids, client.WaitOptions{Every: 50 * time.Millisecond, Finished: func(f client.Finished) {
		switch f.Outcome {
		case client.OutcomePassed:
			rep.Passed++
		case client.OutcomeFailed:
			rep.Failed++
		default:
			rep.Errored++
		}
		if f.Retried > 0 {
			rep.Retried++
		}
		rep.Attempts += f.Retried + 1
		ended++
		d.opts.Progress(ended, len(ids))
	}})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	stopZombie()
	zombie.Wait()
	if err := d.waitCleanups(ctx, insp); err != nil {
		return nil, err
	}
	if _, err := d.pool.Reap(ctx); err != nil {
		return nil, err
	}
	for _, o := range []pool.ReleaseOutcome{pool.Released, pool.AlreadyInPool, pool.StaleLease, pool.NotLeased} {
		rep.Releases[o] = int(d.metrics.Releases(o, ""))
	}
	rep.DoubleReleases = int(d.metrics.DoubleReleases(""))
	rep.DuplicateReleases = int(d.metrics.Releases(pool.DuplicateRelease, ""))
	rep.StaleRefused = rep.Releases[pool.StaleLease]
	for _, e := range d.execs {
		rep.Overlaps += e.Stats().Overlaps
	}
	counts, err := d.pool.Counts(ctx)
	if err != nil {
		return nil, err
	}
	rep.ExecutorsLost = len(d.urls) - int(counts.Available+counts.Quarantined)
	if rep.Violations, err = d.pool.Check(ctx); err != nil {
		return nil, err
	}
	rep.Wall = time.Since(start)
	return rep, nil
}

// replayLateReleases plays a zombie while the evals run: it releases again,
// under a path of its own, leases whose cleanup already ran, as a late
// duplicate callback would. The pool must refuse every one of them.
func (d *Demo) replayLateReleases(ctx context.Context, insp *asynq.Inspector, rep *Report) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		done, err := insp.ListCompletedTasks(tasks.Queues(d.pool.Name()).Cleanup, asynq.PageSize(20))
		if err != nil || len(done) == 0 {
			continue
		}
		c, err := tasks.ParseCleanup(done[n%len(done)].Payload)
		if err != nil {
			continue
		}
		r, err := d.pool.Release(ctx, pool.Lease{URL: c.URL, Token: c.Token, EvalID: c.EvalID}, pool.ReleaseArgs{Path: PathLateDuplicate})
		if err != nil {
			continue
		}
		rep.LateDuplicates++
		if r.Outcome == pool.Released {
			rep.LateDuplicatesFreed++
		}
	}
}

// PathLateDuplicate is the release path of the demo's zombie releases.
const PathLateDuplicate = "late_duplicate"

// waitCleanups waits until no cleanup is pending, running or retrying.
func (d *Demo) waitCleanups(ctx context.Context, insp *asynq.Inspector) error {
	for {
		q, err := insp.GetQueueInfo(tasks.Queues(d.pool.Name()).Cleanup)
		if err != nil {
			return fmt.Errorf("demo: cleanup queue: %w", err)
		}
		if q.Pending+q.Active+q.Scheduled+q.Retry == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close stops the worker and the executors, takes the demo's executors out
// of the pool (on a real Redis they would be dead entries), and closes
// Redis.
func (d *Demo) Close() error {
	if d.stop != nil {
		d.stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.pool != nil && !d.embedded {
		for _, u := range d.urls {
			_, _ = d.pool.Deregister(ctx, u)
		}
	}
	for _, s := range d.servers {
		_ = s.Shutdown(ctx)
	}
	d.wg.Wait()
	var errs []error
	if d.client != nil {
		errs = append(errs, d.client.Close())
	}
	if d.mini != nil {
		d.mini.Close()
	}
	return errors.Join(append(errs, d.workErr)...)
}

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "evals:            %d passed, %d failed, %d errored (archived); %d retried, %d attempts\n", r.Passed, r.Failed, r.Errored, r.Retried, r.Attempts)
	fmt.Fprintf(w, "releases:         %d released, %d already_in_pool, %d stale_lease, %d not_leased\n",
		r.Releases[pool.Released], r.Releases[pool.AlreadyInPool], r.Releases[pool.StaleLease], r.Releases[pool.NotLeased])
	fmt.Fprintf(w, "second releases:  %d by the other cleanup path of a lease already released: absorbed, expected\n", r.DuplicateReleases)
	fmt.Fprintf(w, "double releases:  %d (the zombie's late replays, a token that never held the executor or outlived its lease), all absorbed; %d of them while another eval held it\n", r.DoubleReleases, r.StaleRefused)
	fmt.Fprintf(w, "late duplicates:  %d replayed by a zombie, %d freed an executor\n", r.LateDuplicates, r.LateDuplicatesFreed)
	fmt.Fprintf(w, "overlaps:         %d at the executors\n", r.Overlaps)
	fmt.Fprintf(w, "executors lost:   %d\n", r.ExecutorsLost)
	if len(r.Violations) == 0 {
		fmt.Fprintln(w, "pool check:       ok")
	} else {
		fmt.Fprintf(w, "pool check:       %d violations\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(w, "  %s\n", v)
		}
	}
	fmt.Fprintf(w, "wall time:        %s\n", r.Wall.Round(time.Millisecond))
}

// OK reports whether the promise held: nothing lost, nothing double-booked.
func (r *Report) OK() bool {
	return r.ExecutorsLost == 0 && r.Overlaps == 0 && len(r.Violations) == 0 && r.LateDuplicatesFreed == 0
}
