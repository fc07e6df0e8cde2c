// Package worker runs evals: the Asynq handlers for evals, cleanups and
// reaps, the server's error handler, and the scheduler that reaps the pool.
//
// An eval attempt leases an executor, keeps the lease alive with a heartbeat
// while the executor works (a lost lease cancels the call), and then enqueues
// the cleanup for its outcome. Cleanup is wired twice on purpose: the
// server's error handler enqueues a failure cleanup for every attempt that
// errored or panicked, so an attempt that fails is released by both paths,
// and with CleanupBoth every attempt is. Both paths end in the pool's
// owner-checked release, so the second one finds the executor already back
// (or already someone else's) and changes nothing.
//
// Asynq's recovery of a crashed worker's task calls no error handler, and a
// crashed worker enqueues no cleanup: the executor it held comes back when
// its lease expires and the periodic reap (or the next acquire) reclaims it.
package worker

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/lua"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// CleanupMode says which cleanups an eval attempt enqueues itself.
type CleanupMode string

const (
	// CleanupOutcome enqueues the cleanup of the attempt's outcome: success
	// or failure. The error handler adds a failure cleanup for failures.
	CleanupOutcome CleanupMode = "outcome"
	// CleanupBoth enqueues both cleanups for every attempt, the original
	// belt and suspenders, to prove that a double release is harmless.
	CleanupBoth CleanupMode = "both"
	// CleanupInline releases the executor in the attempt's own handler as
	// soon as its result is written (path inline), and enqueues a cleanup
	// only if that release fails. The error handler's failure cleanup stays,
	// so a failed attempt is still released on two paths. It saves a task
	// per eval: the price of the two-task contract is in BENCHMARKS.md.
	CleanupInline CleanupMode = "inline"
)

// MaxExecutorWait bounds ExecutorWait: an eval's task is given its timeout
// plus tasks.WaitAllowance, so an attempt that waits this long for an
// executor still has its whole timeout on it.
const MaxExecutorWait = tasks.WaitAllowance / 2

// The defaults of Config, exported so that the CLI's flags show and use
// the same values.
const (
	DefaultConcurrency         = 10
	DefaultReapInterval        = 10 * time.Second
	DefaultExecutorWait        = MaxExecutorWait
	DefaultNoExecutorDelay     = 500 * time.Millisecond
	DefaultPollInterval        = time.Second
	DefaultCleanupPollInterval = 20 * time.Millisecond
	DefaultShutdownTimeout     = 10 * time.Second
	DefaultProbeTimeout        = 2 * time.Second
	DefaultRetryDelay          = time.Second
	// MaxRetryDelay bounds the default RetryDelay's doubling.
	MaxRetryDelay = 10 * time.Minute
)

// ErrErrored is the error of an attempt whose executor answered that the
// eval errored: its grader crashed, ran out of time or gave no result. It
// is the eval's fault, not the executor's: it spends a retry, and the retry
// prefers another executor.
var ErrErrored = errors.New("errored")

// Parts are what a worker works on, all on one Redis client:
// evalpool.NewWorker makes them, and every field is required.
type Parts struct {
	// Redis is the client Asynq and the pools share.
	Redis redis.UniversalClient
	// Pools are the executor pools whose evals this worker runs: it serves
	// their queues and no other, and refuses a task that names another pool.
	// At least one; their names must differ.
	Pools []*pool.Pool
	// Asynq enqueues cleanups and evals handed back; Inspector reads
	// Asynq's state of an eval whose end a run has not recorded.
	Asynq     *asynq.Client
	Inspector *asynq.Inspector
	// Runs records the ends of runs' evals.
	Runs *run.Store
}

func (p *Parts) validate() error {
	if p.Redis == nil || p.Asynq == nil || p.Inspector == nil || p.Runs == nil || len(p.Pools) == 0 {
		return errors.New("worker: Parts needs Redis, Asynq, Inspector, Runs and at least one pool (evalpool.NewWorker makes them)")
	}
	seen := map[string]bool{}
	for _, p := range p.Pools {
		if p == nil || seen[p.Name()] {
			return errors.New("worker: Parts.Pools holds a nil pool or one name twice")
		}
		seen[p.Name()] = true
	}
	return nil
}

// Config tunes a Worker. The zero value is usable.
type Config struct {
	// AllowEvictingRedis lets the worker start on a Redis whose
	// maxmemory-policy may evict keys (anything but noeviction). Such a
	// Redis can drop a pool's keys under memory pressure and lose executors
	// and evals without a word; the worker refuses it unless told otherwise.
	AllowEvictingRedis bool
	// Concurrency is how many evals run at once. Defaults to
	// DefaultConcurrency (10).
	Concurrency int
	// CleanupConcurrency is how many cleanups and reaps run at once, in
	// slots of their own so that a release never waits behind evals.
	// Defaults to half of Concurrency, at least 4.
	CleanupConcurrency int
	// Cleanup says which cleanups an attempt enqueues. Defaults to
	// CleanupOutcome.
	Cleanup CleanupMode
	// LeaseTTL is the executor lease TTL of evals that name none; the lease is
	// renewed every LeaseTTL/3. Defaults to 30 s.
	LeaseTTL time.Duration
	// ReapInterval is how often the pool is reaped, at most once per interval
	// across all workers: whole seconds, at least 1 s (the scheduler's cron
	// and Asynq's uniqueness both count in seconds). Defaults to
	// DefaultReapInterval (10 s).
	ReapInterval time.Duration
	// ExecutorWait is how long an attempt that finds no free executor waits
	// in the pool's FIFO wait list before it hands its task back to the
	// queue (keeping its place in line for its next attempt). Waiting costs
	// no Redis call: the pool hands a freed executor straight to the oldest
	// waiter and wakes its worker. At most MaxExecutorWait. Defaults to
	// DefaultExecutorWait (MaxExecutorWait); negative for none: the task
	// goes back to the queue at once.
	ExecutorWait time.Duration
	// NoExecutorDelay is the mean delay before an eval handed back for want
	// of an executor tries again (jittered by ±50%); such a retry does not
	// count against the eval's retries. Defaults to DefaultNoExecutorDelay
	// (500 ms).
	NoExecutorDelay time.Duration
	// RetryDelay is the delay before retrying attempt n (from 0) of a
	// failed eval: one that errored, or found its executor unavailable.
	// Defaults to ExponentialBackoff(DefaultRetryDelay, MaxRetryDelay):
	// about 1 s, 2 s, 4 s, ...
	RetryDelay func(n int) time.Duration
	// PollInterval is how long an idle worker waits before it looks at empty
	// queues again, and how often due retries are moved to their queue.
	// Defaults to DefaultPollInterval (1 s).
	PollInterval time.Duration
	// CleanupPollInterval is PollInterval for the cleanup queue while the
	// worker runs evals, and for 10 s after (unless Cleanup is inline). An
	// executor stays leased until its cleanup runs, so a cleanup that waits
	// for the next look at its queue is an executor kept idle: this poll is
	// short, at the cost of a small round trip per interval. A worker that
	// runs no eval looks at the cleanup queue every PollInterval. Defaults
	// to DefaultCleanupPollInterval (20 ms), or PollInterval if shorter.
	CleanupPollInterval time.Duration
	// ShutdownTimeout is how long a stopping worker waits for running tasks
	// before it hands them back to the queue. Defaults to
	// DefaultShutdownTimeout (10 s).
	ShutdownTimeout time.Duration
	// Executor calls the executors. Defaults to a zero executor.Client.
	Executor *executor.Client
	// ProbeTimeout bounds the health probe of a quarantined executor, which
	// every reap runs on the executors due (pool.Options.ProbeInterval).
	// Defaults to DefaultProbeTimeout (2 s).
	ProbeTimeout time.Duration
	// Logger receives the worker's and Asynq's logs. Defaults to discarding.
	Logger *zerolog.Logger
	// Metrics counts evals and cleanups. Defaults to a private set.
	Metrics *Metrics
}

func (c *Config) validate() error {
	switch {
	case c.Concurrency < 0 || c.CleanupConcurrency < 0:
		return fmt.Errorf("worker: concurrency may not be negative, got %d and %d", c.Concurrency, c.CleanupConcurrency)
	case c.Cleanup != "" && c.Cleanup != CleanupOutcome && c.Cleanup != CleanupBoth && c.Cleanup != CleanupInline:
		return fmt.Errorf("worker: cleanup must be %q, %q or %q, got %q", CleanupOutcome, CleanupBoth, CleanupInline, c.Cleanup)
	case c.ExecutorWait > MaxExecutorWait:
		return fmt.Errorf("worker: executor wait may be at most %s, got %s", MaxExecutorWait, c.ExecutorWait)
	case c.LeaseTTL < 0 || c.LeaseTTL > 0 && c.LeaseTTL < 10*time.Millisecond || c.LeaseTTL > tasks.MaxLeaseTTL:
		return fmt.Errorf("worker: lease TTL must be from 10ms to %s, got %s", tasks.MaxLeaseTTL, c.LeaseTTL)
	case c.ReapInterval != 0 && (c.ReapInterval < time.Second || c.ReapInterval%time.Second != 0):
		return fmt.Errorf("worker: reap interval must be whole seconds, at least 1s, got %s", c.ReapInterval)
	case c.NoExecutorDelay < 0, c.ShutdownTimeout < 0, c.PollInterval < 0, c.CleanupPollInterval < 0, c.ProbeTimeout < 0:
		return errors.New("worker: intervals and timeouts may not be negative")
	}
	return nil
}

func (c *Config) withDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.CleanupConcurrency == 0 {
		c.CleanupConcurrency = max(4, c.Concurrency/2)
	}
	if c.Cleanup == "" {
		c.Cleanup = CleanupOutcome
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = tasks.DefaultLeaseTTL
	}
	if c.ReapInterval == 0 {
		c.ReapInterval = DefaultReapInterval
	}
	if c.ExecutorWait == 0 {
		c.ExecutorWait = DefaultExecutorWait
	}
	if c.NoExecutorDelay == 0 {
		c.NoExecutorDelay = DefaultNoExecutorDelay
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.CleanupPollInterval == 0 {
		c.CleanupPollInterval = min(DefaultCleanupPollInterval, c.PollInterval)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Executor == nil {
		c.Executor = &executor.Client{}
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.RetryDelay == nil {
		c.RetryDelay = ExponentialBackoff(DefaultRetryDelay, MaxRetryDelay)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics()
	}
}

// Worker processes evalpool's tasks.
type Worker struct {
	cfg    Config
	log    zerolog.Logger
	redis  redis.UniversalClient
	client *asynq.Client
	pools  map[string]*servedPool
	id     string // names this process's wake lists
	runs   *run.Store
	// endLease is the release policy: how an attempt's lease ends once its
	// outcome is reported (Config.Cleanup). A stopping worker swaps in
	// inline, since its cleanup servers are going.
	endLease atomic.Pointer[endLease]
	attempts inflight
	// gear runs the fast cleanup servers while evals run.
	gear gear
	// ends are eval ends not yet written to their runs; inspector reads
	// Asynq's state to reconcile runs.
	ends      unrecorded
	inspector *asynq.Inspector
	// handBacks and clocks are what the worker knows of the boundary with
	// each executor: attempts handed back in a row, clocks said to differ.
	handBacks streaks
	clocks    clockNotes
}

// noRetry marks err so that Asynq archives the task at once (it is
// asynq.SkipRetry) without Asynq's "(skip retry for the task)" in the
// message an operator reads.
func noRetry(err error) error { return skipRetry{err} }

type skipRetry struct{ err error }

func (e skipRetry) Error() string   { return e.err.Error() }
func (e skipRetry) Unwrap() []error { return []error{e.err, asynq.SkipRetry} }

// errStopping is the cause an attempt still running when Asynq gave up on
// it (Config.ShutdownTimeout) is cancelled with.
var errStopping = errors.New("worker stopping: the attempt outlived the shutdown timeout")

// inflight are the eval attempts running, so that a stopping worker can end
// those Asynq abandoned and return their executors before it exits.
type inflight struct {
	mu sync.Mutex
	m  map[*attempt]struct{}
	// idleSince is when the last attempt returned, while none runs.
	idleSince time.Time
}

type attempt struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

func (f *inflight) add(cancel context.CancelCauseFunc) *attempt {
	a := &attempt{cancel: cancel, done: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[*attempt]struct{}{}
	}
	f.m[a] = struct{}{}
	return a
}

func (f *inflight) remove(a *attempt) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, a)
	if len(f.m) == 0 {
		f.idleSince = time.Now()
	}
	close(a.done)
}

// idleFor is how long no attempt has run: 0 while one runs.
func (f *inflight) idleFor() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) > 0 {
		return 0
	}
	return time.Since(f.idleSince)
}

// end cancels every attempt still running and waits for them to return,
// up to d: each releases its executor on its way out. It returns how many
// did not return in time.
func (f *inflight) end(d time.Duration) int {
	f.mu.Lock()
	var left []*attempt
	for a := range f.m {
		a.cancel(errStopping)
		left = append(left, a)
	}
	f.mu.Unlock()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for i, a := range left {
		select {
		case <-a.done:
		case <-timeout.C:
			return len(left) - i
		}
	}
	return 0
}

// servedPool is a pool the worker serves, with its heartbeat and what it knows
// of the pool's epoch and clock (the latter tickClocks' alone).
type servedPool struct {
	pool  *pool.Pool
	beats *heartbeat
	wakes *wakes
	epoch epochWatch
	clock pool.Clock
}

// New returns a worker on parts; Run starts it. Programs call
// evalpool.NewWorker, which makes the parts.
func New(parts Parts, cfg Config) (*Worker, error) {
	if err := parts.validate(); err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.withDefaults()
	w := &Worker{cfg: cfg, log: zerolog.Nop(), redis: parts.Redis, client: parts.Asynq, runs: parts.Runs, inspector: parts.Inspector}
	if cfg.Logger != nil {
		w.log = *cfg.Logger
	}
	id := make([]byte, 8)
	_, _ = crand.Read(id)
	w.id = hex.EncodeToString(id)
	w.pools = map[string]*servedPool{}
	for _, p := range parts.Pools {
		w.pools[p.Name()] = &servedPool{pool: p, beats: newHeartbeat(p, cfg.Executor, w.log), wakes: newWakes(p, w.id, w.log)}
	}
	w.endLeaseBy(cfg.Cleanup)
	return w, nil
}

// Handler routes each task type to its handler.
func (w *Worker) Handler() asynq.Handler {
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeEval, w.handleEval)
	mux.HandleFunc(tasks.TypeCleanupSuccess, w.handleCleanup)
	mux.HandleFunc(tasks.TypeCleanupFailure, w.handleCleanup)
	mux.HandleFunc(tasks.TypeReap, w.handleReap)
	return mux
}

// Run processes tasks until ctx is done, then shuts down gracefully: running
// evals get ShutdownTimeout to finish; those that do not are cancelled,
// release their executors through their failure cleanup, and go back to the
// queue without spending a retry. Cleanups stop last, so the cleanups of the
// evals that finished run before the worker exits. Run fails at once if
// Redis cannot be reached.
func (w *Worker) Run(ctx context.Context) error {
	evalQueues, cleanupQueues, err := w.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while it started: a stop, not the error of the read it cut
		}
		return err
	}
	closeWakes, err := w.listenWakes(ctx)
	if err != nil {
		return err
	}
	defer closeWakes()
	// The clocks tick until every lease this worker holds is back, since a
	// tick that stops is a promise broken (pool.Tick).
	ticking, stopTicking := context.WithCancel(context.WithoutCancel(ctx))
	var ticks sync.WaitGroup
	ticks.Go(func() { w.tickClocks(ticking) })
	defer func() {
		stopTicking()
		ticks.Wait()
	}()
	logger := asynqLogger{l: w.log}
	// An Asynq server for evals and others for cleanups and reaps, so that
	// a release never waits for a slot behind long evals, and each server
	// asks only its own queues (a round trip per queue it asks): one that
	// looks at them every PollInterval, and, while this worker runs evals,
	// fast ones (gear).
	evals := asynq.NewServerFromRedisClient(w.redis, asynq.Config{
		Concurrency:              w.cfg.Concurrency,
		BaseContext:              func() context.Context { return context.WithoutCancel(ctx) },
		Queues:                   evalQueues,
		IsFailure:                func(err error) bool { return !spendsNoRetry(err) },
		RetryDelayFunc:           w.retryDelay,
		ErrorHandler:             asynq.ErrorHandlerFunc(w.handleError),
		Logger:                   logger,
		TaskCheckInterval:        w.cfg.PollInterval,
		DelayedTaskCheckInterval: w.cfg.PollInterval,
		ShutdownTimeout:          w.cfg.ShutdownTimeout,
	})
	cleanupServer := func(poll time.Duration, logger asynq.Logger) *asynq.Server {
		return asynq.NewServerFromRedisClient(w.redis, asynq.Config{
			Concurrency:              max(1, w.cfg.CleanupConcurrency/fastCleanupServers),
			BaseContext:              func() context.Context { return context.WithoutCancel(ctx) },
			Queues:                   cleanupQueues,
			StrictPriority:           true,
			Logger:                   logger,
			TaskCheckInterval:        poll,
			DelayedTaskCheckInterval: w.cfg.PollInterval,
			ShutdownTimeout:          w.cfg.ShutdownTimeout,
		})
	}
	slow := cleanupServer(w.cfg.PollInterval, logger)
	if w.cfg.Cleanup != CleanupInline {
		w.gear.start = func() ([]*asynq.Server, error) {
			servers := make([]*asynq.Server, 0, fastCleanupServers)
			for range fastCleanupServers {
				s := cleanupServer(w.cfg.CleanupPollInterval, asynqLogger{l: w.log, infoAsDebug: true})
				if err := s.Start(w.Handler()); err != nil {
					for _, s := range servers {
						s.Shutdown()
					}
					return nil, err
				}
				servers = append(servers, s)
			}
			return servers, nil
		}
		w.gear.failed = func(err error) {
			w.log.Warn().Err(err).Msg("could not start the fast cleanup servers: cleanups wait for the next poll")
		}
	}
	gearing, stopGearing := context.WithCancel(ctx)
	var geared sync.WaitGroup
	geared.Go(func() { w.gear.run(gearing, w.attempts.idleFor) })
	defer func() {
		stopGearing()
		geared.Wait()
		w.gear.close()
	}()
	sched := asynq.NewSchedulerFromRedisClient(w.redis, &asynq.SchedulerOpts{
		Logger: logger,
		EnqueueErrorHandler: func(_ *asynq.Task, _ []asynq.Option, err error) {
			if !errors.Is(err, asynq.ErrDuplicateTask) {
				w.log.Warn().Err(err).Msg("reap not scheduled")
			}
		},
	})
	for name := range w.pools {
		reap, err := tasks.NewReap(name)
		if err != nil {
			return err
		}
		if _, err := sched.Register(fmt.Sprintf("@every %s", w.cfg.ReapInterval), reap, asynq.Unique(w.cfg.ReapInterval)); err != nil {
			return fmt.Errorf("worker: schedule the reap of pool %s: %w", name, err)
		}
	}
	started := []*asynq.Server{}
	stop := func() {
		for _, s := range slices.Backward(started) {
			s.Shutdown() // evals first: running evals finish and enqueue their cleanups
		}
	}
	for _, s := range []*asynq.Server{slow, evals} {
		if err := s.Start(w.Handler()); err != nil {
			stop()
			return fmt.Errorf("worker: start: %w", err)
		}
		started = append(started, s)
	}
	if err := sched.Start(); err != nil {
		stop()
		return fmt.Errorf("worker: start scheduler: %w", err)
	}
	w.log.Info().Strs("pools", slices.Sorted(maps.Keys(w.pools))).Int("concurrency", w.cfg.Concurrency).
		Str("cleanup", string(w.cfg.Cleanup)).Dur("lease_ttl", w.cfg.LeaseTTL).Msg("worker started")
	var watch sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(ctx)
	watch.Go(func() { w.watchEpochs(watchCtx) })
	<-ctx.Done()
	stopWatch()
	watch.Wait()
	w.log.Info().Dur("shutdown_timeout", w.cfg.ShutdownTimeout).Msg("worker stopping: running evals finish, or go back to the queue after the shutdown timeout and return their executors; a second interrupt forces the exit")
	w.endLeaseBy(CleanupInline)
	sched.Shutdown()
	stop()
	// Asynq stops waiting for an attempt after ShutdownTimeout and hands its
	// task back to the queue, but the attempt runs on, holding its lease:
	// end it, and wait (bounded) for it to release its executor.
	if left := w.attempts.end(returnTimeout); left > 0 {
		w.log.Error().Int("attempts", left).Msg("attempts still holding executors at exit; their leases expire and are reclaimed")
	}
	for _, sp := range w.pools {
		sp.beats.wait()
	}
	w.log.Info().Msg("worker stopped")
	return nil
}

// returnTimeout bounds how long a stopping worker waits, after Asynq's
// ShutdownTimeout, for abandoned attempts to release their executors.
const returnTimeout = 10 * time.Second

// afterTimeout bounds a Redis call an attempt makes after its own context
// may have ended (a release, leaving the wait list, enqueueing a cleanup):
// the call must go through even then, but never hang the handler.
const afterTimeout = 5 * time.Second

// start makes the worker's start-up reads and checks (Redis answers, its
// user may run Asynq's commands, its eviction policy, each pool's epoch,
// the executors accept the worker's signature) and returns the queues its
// servers serve.
func (w *Worker) start(ctx context.Context) (evalQueues, cleanupQueues map[string]int, err error) {
	if err := w.redis.Ping(ctx).Err(); err != nil {
		return nil, nil, fmt.Errorf("worker: redis: %w", err)
	}
	evalQueues, cleanupQueues = map[string]int{}, map[string]int{}
	var queues []string
	for name := range w.pools {
		q := tasks.Queues(name)
		evalQueues[q.Evals] = 1
		cleanupQueues[q.Cleanup], cleanupQueues[q.Maintenance] = 2, 1
		queues = append(queues, q.Evals, q.Cleanup, q.Maintenance)
	}
	if err := w.checkPermissions(ctx, queues); err != nil {
		return nil, nil, err
	}
	if err := w.checkEviction(ctx); err != nil {
		return nil, nil, err
	}
	if off, ok := w.redisOffset(ctx); ok && abs(off) > clockTolerance {
		w.log.Warn().Float64("worker_minus_redis_s", -off.Seconds()).Msgf("this worker's clock is %s Redis's: leases do not depend on it, but executors that do not tell their time are sent times in it; set it right (NTP)", relative(-off))
	}
	for name, sp := range w.pools {
		epoch, err := sp.pool.Epoch(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("worker: %w", err)
		}
		sp.epoch.last = epoch
		if sp.epoch.last == "" {
			w.log.Warn().Str("pool", name).Msg("pool has no executors registered yet: evals wait until `evalpool pool add` registers some")
		}
	}
	if err := w.checkSignatures(ctx); err != nil {
		return nil, nil, err
	}
	return evalQueues, cleanupQueues, nil
}

// waitsForExecutor reports whether an attempt ended without running for want
// of an executor: none was free, or the one it leased was busy with another
// eval's live lease. Such an attempt is retried soon and spends no retry.
func waitsForExecutor(err error) bool {
	return errors.Is(err, pool.ErrNoExecutor) || errors.Is(err, executor.ErrBusy)
}

func (w *Worker) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var hb *handBack
	if errors.As(err, &hb) {
		return hb.delay
	}
	if waitsForExecutor(err) {
		d := w.cfg.NoExecutorDelay
		return d/2 + rand.N(d)
	}
	return w.cfg.RetryDelay(n)
}

// ExponentialBackoff returns a RetryDelay that starts at base and doubles
// per retry, up to limit, with ±25% jitter so that retries spread out.
func ExponentialBackoff(base, limit time.Duration) func(n int) time.Duration {
	return func(n int) time.Duration {
		d := limit
		if n < 32 && base<<n > 0 && base<<n < limit {
			d = base << n
		}
		return d*3/4 + rand.N(d/2+1)
	}
}

// AttemptError is the error of an eval attempt that held a lease: the error
// handler reads the lease from it to enqueue its failure cleanup.
type AttemptError struct {
	Pool  string
	Lease pool.Lease
	Err   error
	// Verdict is what the attempt made of the executor, and Retrying
	// whether the eval will be tried again: its failure cleanup reports them.
	Verdict  pool.Verdict
	Retrying bool
}

func (e *AttemptError) Error() string { return e.Err.Error() }
func (e *AttemptError) Unwrap() error { return e.Err }

// servedFor returns the served pool a task names, after checking that the
// task came from that pool's queue: a task put on another pool's queue (by
// hand, or by a hostile client) is refused, never run on the wrong pool.
func (w *Worker) servedFor(ctx context.Context, name string) (*servedPool, error) {
	sp, ok := w.pools[name]
	if !ok {
		return nil, fmt.Errorf("%w: the task names pool %q, which this worker does not serve", tasks.ErrBadPayload, name)
	}
	if q, ok := asynq.GetQueueName(ctx); ok {
		if owner, _ := tasks.PoolOfQueue(q); owner != name {
			return nil, fmt.Errorf("%w: the task names pool %q but came from queue %q", tasks.ErrBadPayload, name, q)
		}
	}
	return sp, nil
}

// cancelled reports whether the eval was cancelled (pool.Cancel): asked
// when its attempt ends in error with its context done, to tell a cancel
// from a stopping worker.
func (w *Worker) cancelled(ctx context.Context, sp *servedPool, e tasks.Eval) bool {
	ok, err := sp.pool.Cancelled(context.WithoutCancel(ctx), e.ID)
	if err != nil {
		w.log.Warn().Err(err).Str("eval", e.ID).Msg("could not tell whether the eval was cancelled")
	}
	return ok
}

// endEval records how an eval ended: in its run, or, for an eval of no
// run, by taking it out of flight (endStandalone). The first end recorded wins (run.Store.Finish). An end that cannot be written
// now is kept and written again at each maintenance tick (watchEpochs); a
// worker killed first loses it, and the reap's reconciliation of the runs
// records it from Asynq's state.
func (w *Worker) endEval(ctx context.Context, e tasks.Eval, rec run.Record) (written bool) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
	defer cancel()
	if e.Run == "" {
		w.endStandalone(rctx, e)
		return false
	}
	rec.Key, rec.Group, rec.Epoch, rec.At = e.Key, e.Group, e.Epoch, time.Now()
	_, err := w.runs.Finish(rctx, e.Run, rec)
	switch {
	case err == nil:
		if sp := w.pools[e.Pool]; sp != nil {
			w.admit(rctx, sp)
		}
		return true
	case errors.Is(err, run.ErrInvalid):
	case w.ends.add(e.Run, rec):
		w.cfg.Metrics.unrecorded.Set(float64(w.ends.len()))
		w.log.Warn().Err(err).Str("eval", e.ID).Str("run", e.Run).Msg("could not record the eval's end in its run; trying again every reap interval")
	default:
		w.log.Error().Err(err).Str("eval", e.ID).Str("run", e.Run).Msg("could not record the eval's end in its run, and too many wait already; the reap's reconciliation records it")
	}
	return false
}

// endStandalone takes an eval of no run that ended out of flight, and
// admits the pool's next. One not taken out now is at the next reap
// (client.Readmit).
func (w *Worker) endStandalone(ctx context.Context, e tasks.Eval) {
	sp := w.pools[e.Pool]
	if sp == nil {
		return
	}
	if err := w.runs.EndStandalone(ctx, e.Pool, e.ID); err != nil {
		w.log.Warn().Err(err).Str("eval", e.ID).Msg("could not take the eval out of flight; the next reap does")
		return
	}
	w.admit(ctx, sp)
}

// admit lets the pool's runs have their next evals in flight, by the fair
// share (client.Admit), once one ended.
func (w *Worker) admit(ctx context.Context, sp *servedPool) {
	if _, err := client.Admit(ctx, w.client, w.inspector, sp.pool, w.runs); err != nil {
		w.log.Warn().Err(err).Str("pool", sp.pool.Name()).Msg("could not admit the runs' next evals; the next end or reap does")
	}
}

// verdictOf is what an attempt made of its executor: its grade when it
// answered with one, errored when it answered that the eval errored,
// unavailable when it did not serve the call, and nothing when the
// attempt ended for another reason (cancelled, lease lost, refused as busy).
func verdictOf(res executor.Result, runErr error) pool.Verdict {
	switch {
	case runErr == nil && res.Status == executor.StatusPassed:
		return pool.VerdictPassed
	case runErr == nil && res.Status == executor.StatusFailed:
		return pool.VerdictFailed
	case errors.Is(runErr, ErrErrored):
		return pool.VerdictErrored
	case runErr != nil && executor.Unavailable(runErr):
		return pool.VerdictUnavailable
	}
	return pool.VerdictNone
}

// attemptError wraps a failed attempt's error with its lease and verdict,
// and with SkipRetry on its last attempt (see tasks.NoExecutorReserve).
func (w *Worker) attemptError(ctx context.Context, sp *servedPool, lease pool.Lease, verdict pool.Verdict, err error) error {
	retrying := w.retries(ctx, err)
	if !retrying {
		err = noRetry(err)
	}
	return &AttemptError{Pool: sp.pool.Name(), Lease: lease, Err: err, Verdict: verdict, Retrying: retrying}
}

// retries reports whether an attempt that failed with err will be tried
// again.
func (w *Worker) retries(ctx context.Context, err error) bool {
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	return retried+tasks.NoExecutorReserve < maxRetry || spendsNoRetry(err)
}

// acquire leases an executor. With none free it waits up to ExecutorWait in
// the pool's FIFO wait list, where the pool hands it the next executor
// freed, ahead of any newcomer, and this worker's wake connection brings the
// grant: waiting costs no Redis call, however long. An attempt that gives up
// hands its task back with ErrNoExecutor, keeping its place in line for the
// next; one whose context ends leaves the line, giving back an executor
// handed to it in the race. Waiting holds an eval slot, never a cleanup
// slot, so it cannot keep the releases it waits for from running.
func (w *Worker) acquire(ctx context.Context, sp *servedPool, e tasks.Eval, ttl time.Duration) (pool.Lease, error) {
	evalID := e.ID
	if w.cfg.ExecutorWait <= 0 {
		lease, err := sp.pool.Acquire(ctx, evalID, ttl, pool.AcquireArgs{Require: e.Require})
		if errors.Is(err, pool.ErrPoolMissing) {
			w.noteMissing(sp, evalID)
		}
		return lease, err
	}
	grants := sp.wakes.expect(evalID)
	defer sp.wakes.done(evalID, grants)
	started := time.Now() // before the join: a grant comes after it
	// The place in line outlives the attempt long enough for its task's
	// next attempt to come back to it.
	place := pool.Wait{Wake: sp.wakes.key, PlaceTTL: w.cfg.ExecutorWait + 2*w.cfg.NoExecutorDelay + 10*time.Second}
	lease, err := sp.pool.Acquire(ctx, evalID, ttl, pool.AcquireArgs{Require: e.Require, Wait: place})
	if errors.Is(err, pool.ErrPoolMissing) {
		w.noteMissing(sp, evalID)
	}
	if !errors.Is(err, pool.ErrWaiting) {
		return lease, err
	}
	token := lease.Token
	timer := time.NewTimer(w.cfg.ExecutorWait)
	defer timer.Stop()
	for {
		select {
		case g := <-grants:
			if g.Token != token {
				continue // a grant to an earlier attempt: the next acquire re-enters it
			}
			w.cfg.Metrics.executorWait.WithLabelValues(sp.pool.Name()).Observe(time.Since(started).Seconds())
			// The grant came after the join was sent, so the lease holds at
			// least ttl from then. While most of that is left, that is its
			// expiry on this clock; past that it is renewed at once.
			if g.Expires = started.Add(ttl); g.Remaining() > ttl/2 {
				return *g, nil
			}
			l, err := sp.pool.Renew(ctx, *g, ttl)
			if err != nil {
				return pool.Lease{}, fmt.Errorf("eval %s: the executor handed to it: %w", evalID, err)
			}
			return l, nil
		case <-timer.C:
			return pool.Lease{}, err // back to the queue; its place in line stays
		case <-ctx.Done():
			leaveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
			defer cancel()
			if _, _, lerr := sp.pool.Leave(leaveCtx, evalID, token); lerr != nil {
				w.log.Warn().Err(lerr).Str("eval", evalID).Msg("could not leave the wait list; an executor handed to this eval returns when its lease expires")
			}
			return pool.Lease{}, fmt.Errorf("eval %s stopped waiting for an executor: %w", evalID, context.Cause(ctx))
		}
	}
}

// runOnLease calls the executor while the worker's heartbeat renews the
// lease every ttl/3. A lease that is lost, or that cannot be renewed before its
// deadline, cancels the call: the executor may be someone else's by then.
func (w *Worker) runOnLease(ctx context.Context, sp *servedPool, e tasks.Eval, lease pool.Lease, ttl time.Duration) (executor.Result, error) {
	// The eval's timeout runs from now, when it has its executor: the wait
	// before is paid from Asynq's allowance (tasks.WaitAllowance). Asynq's
	// own deadline may come first.
	deadline := time.Now().Add(e.Timeout())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// Give up a little before that deadline, so that the attempt fails
	// here, with its lease, its cleanup and its retry decision, rather than
	// in Asynq, which would ignore what the handler returns. One context
	// carries the earlier deadline: a context of the timeout under it (as
	// context.WithTimeout would make) could never end first, and would cost
	// a context, a timer and a list of children per attempt.
	ctx, stop := context.WithDeadline(ctx, deadline.Add(-min(time.Until(deadline)/10, time.Second)))
	defer stop()
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	beat := sp.beats.keep(callCtx, lease, ttl, cancel)
	defer sp.beats.stop(beat) // deferred: a panicking call must not leave its lease renewed for ever
	req := executor.Request{EvalID: e.ID, Fence: lease.Fence, Spec: e.Spec, LeaseMs: lease.Remaining().Milliseconds()}
	if req.LeaseMs <= 0 {
		return executor.Result{}, fmt.Errorf("eval %s: %w: %s expired before the call", e.ID, pool.ErrLeaseLost, lease.URL)
	}
	prior, known := w.cfg.Executor.Offset(lease.URL)
	res, err := w.cfg.Executor.Run(callCtx, lease.URL, req)
	if lost := context.Cause(callCtx); err != nil && errors.Is(lost, pool.ErrLeaseLost) {
		return res, fmt.Errorf("eval %s: %w", e.ID, lost)
	}
	if err != nil {
		return res, fmt.Errorf("eval %s: %w", e.ID, w.misconfigured(ctx, sp, lease, ttl, sp.beats.holds(beat), prior, known, err))
	}
	return res, nil
}

// encodeResult is what writeResult writes.
func encodeResult(r tasks.EvalResult) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("eval %s: encode result: %w", r.EvalID, err)
	}
	return b, nil
}

// writeResult stores an eval's result where Asynq's ResultWriter would, but
// only while its task is there: a late write after Redis's data went back
// would recreate the task as a stub that refuses its enqueue again.
func (w *Worker) writeResult(ctx context.Context, t *asynq.Task, evalID string, b []byte) error {
	queue, _ := asynq.GetQueueName(ctx)
	n, err := lua.WriteResult.Run(ctx, w.redis, []string{tasks.ResultKey(queue, t.ResultWriter().TaskID())}, b).Int()
	if err != nil {
		return fmt.Errorf("eval %s: write result: %w", evalID, err)
	}
	if n == 0 {
		w.noteTaskGone(evalID)
	}
	return nil
}

// noteTaskGone says that an eval's task vanished under its attempt: Redis's
// data went back, or was lost; a waiting submitter enqueues it again.
func (w *Worker) noteTaskGone(evalID string) {
	w.log.Warn().Str("eval", evalID).Msg("the eval's task is gone from Redis (its data went back, or was lost): its result is not written")
}

// enqueueCleanup enqueues a cleanup even when the attempt's context is done
// (a timeout is a failure that needs its cleanup most). A duplicate, same
// path, eval and lease, is refused by its task ID: that is success.
func (w *Worker) enqueueCleanup(ctx context.Context, typ string, c tasks.Cleanup) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
	defer cancel()
	t, err := tasks.NewCleanup(typ, c)
	if err == nil {
		_, err = w.client.EnqueueContext(ctx, t)
	}
	switch {
	case err == nil:
		w.cfg.Metrics.cleanupsEnqueued.WithLabelValues(c.Pool, c.Path, "enqueued").Inc()
	case errors.Is(err, asynq.ErrTaskIDConflict):
		w.cfg.Metrics.cleanupsEnqueued.WithLabelValues(c.Pool, c.Path, "duplicate").Inc()
	default:
		w.cfg.Metrics.cleanupsEnqueued.WithLabelValues(c.Pool, c.Path, "error").Inc()
		w.log.Error().Err(err).Str("eval", c.EvalID).Str("executor", c.URL).Str("path", c.Path).
			Msg("cleanup not enqueued; the lease will be reclaimed at its deadline")
	}
}

// handleError is the second cleanup path: every eval attempt that failed
// while holding a lease, by error or panic, gets a failure cleanup. Asynq
// calls it for every failed attempt, after the handler returned or its
// context ended.
func (w *Worker) handleError(ctx context.Context, t *asynq.Task, err error) {
	if t.Type() != tasks.TypeEval {
		return
	}
	// Asynq archives the task after this when its retries are spent or it
	// is SkipRetry: its end, for its run.
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	if e, perr := tasks.ParseEval(t.Payload()); perr == nil && (errors.Is(err, asynq.SkipRetry) || retried >= maxRetry) {
		w.endEval(ctx, e, run.Record{Status: run.Errored, Error: err.Error(), Retries: retried})
	}
	var ae *AttemptError
	if !errors.As(err, &ae) {
		return // failed before it held a lease: nothing to release
	}
	lease := ae.Lease
	w.enqueueCleanup(ctx, tasks.TypeCleanupFailure, tasks.Cleanup{
		EvalID: lease.EvalID, Pool: ae.Pool, URL: lease.URL, Token: lease.Token, Fence: lease.Fence,
		Path: tasks.PathErrorHandler, Error: err.Error(), Verdict: string(ae.Verdict), Retrying: ae.Retrying,
	})
}

func (w *Worker) handleCleanup(ctx context.Context, t *asynq.Task) error {
	c, err := tasks.ParseCleanup(t.Payload())
	var sp *servedPool
	if err == nil {
		sp, err = w.servedFor(ctx, c.Pool)
	}
	if err != nil {
		return noRetry(err)
	}
	r, err := sp.pool.Release(ctx, pool.Lease{URL: c.URL, Token: c.Token, EvalID: c.EvalID, Fence: c.Fence},
		pool.ReleaseArgs{Path: c.Path, Verdict: pool.Verdict(c.Verdict), Retrying: c.Retrying, ByCleanup: true})
	if err != nil {
		return fmt.Errorf("cleanup of eval %s: %w", c.EvalID, err)
	}
	w.log.Debug().Str("eval", c.EvalID).Str("executor", c.URL).Str("path", c.Path).Str("outcome", string(r.Outcome)).Msg("cleanup")
	return nil
}

func (w *Worker) handleReap(ctx context.Context, t *asynq.Task) error {
	r, err := tasks.ParseReap(t.Payload())
	var sp *servedPool
	if err == nil {
		sp, err = w.servedFor(ctx, r.Pool)
	}
	if err != nil {
		return noRetry(err)
	}
	n, ran, err := sp.pool.ReapEvery(ctx, w.cfg.ReapInterval)
	if isFull(err) {
		// The once-per-interval mark is a write a full Redis refuses; the
		// reap frees memory, and runs.
		n, err = sp.pool.Reap(ctx)
	}
	if err != nil {
		return err
	}
	if ran && n > 0 {
		w.log.Info().Str("pool", r.Pool).Int("reclaimed", n).Msg("reaped expired leases")
	}
	if ran {
		w.reconcileRuns(ctx, sp) // once per interval across the fleet, as the reap
		if n, err := client.Readmit(ctx, w.client, w.inspector, sp.pool, w.runs); err != nil || n > 0 {
			w.log.Warn().Err(err).Str("pool", sp.pool.Name()).Int("enqueued", n).Msg("evals admitted but not in the queue, enqueued again")
		}
	}
	w.admit(ctx, sp) // at every reap: an admission a crash cut short
	// Each due executor is claimed in Redis before it is probed, so the
	// reaps of many workers probe it once.
	_, err = sp.pool.ProbeQuarantined(ctx, probeBatch, w.probe)
	return err
}

// probeBatch bounds the quarantined executors one reap probes; the rest
// are due at the next.
const probeBatch = 16

// probe is the health check of a quarantined executor: GET /healthz,
// bounded so that a hung executor cannot hold up the reap.
func (w *Worker) probe(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.ProbeTimeout)
	defer cancel()
	return w.cfg.Executor.Healthy(ctx, url)
}

// asynqLogger logs Asynq's messages. For the fast cleanup servers, which
// start and stop with every burst of evals, infoAsDebug keeps their
// starting and stopping out of the info log.
type asynqLogger struct {
	l           zerolog.Logger
	infoAsDebug bool
}

func (a asynqLogger) Debug(args ...any) { a.log(a.l.Debug(), args) }

func (a asynqLogger) Info(args ...any) {
	if a.infoAsDebug {
		a.log(a.l.Debug(), args)
		return
	}
	a.log(a.l.Info(), args)
}

func (a asynqLogger) Warn(args ...any)  { a.log(a.l.Warn(), args) }
func (a asynqLogger) Fatal(args ...any) { a.log(a.l.Fatal(), args) }

func (a asynqLogger) Error(args ...any) {
	if msg := fmt.Sprint(args...); strings.Contains(msg, "redis connection is shared") {
		// Asynq reports on every shutdown that it did not close the client
		// it shares with the pool, as it should not.
		a.log(a.l.Debug(), args)
		return
	}
	a.log(a.l.Error(), args)
}

func (asynqLogger) log(e *zerolog.Event, args []any) {
	e.Str("component", "asynq").Msg(fmt.Sprint(args...))
}

// erroredWhy is why an errored eval has no grade, on one line: what the
// executor said, and the end of the grader's stderr.
func erroredWhy(res executor.Result) string {
	why := cmp.Or(res.Error, "the executor gave no reason")
	if res.Stderr != "" {
		why += "; stderr ends: " + strings.Join(strings.Fields(executor.Tail(res.Stderr, erroredStderr)), " ")
	}
	return why
}

// erroredStderr is how much of an errored eval's stderr its error quotes:
// the last line or two, where a program says why it stopped. The whole
// tail is in its result.
const erroredStderr = 200

// recordOf is how an eval of a run that ended on this attempt ended.
func recordOf(res executor.Result, took time.Duration, attempt int, url string) run.Record {
	rec := run.Record{Status: res.Status, Score: res.Score, Metrics: res.Metrics, Output: res.Output, Duration: took.Seconds(), Retries: attempt, Executor: url,
		ExitCode: res.ExitCode, Stdout: res.Stdout, Stderr: res.Stderr}
	if res.Status == executor.StatusErrored {
		rec.Error = erroredWhy(res)
	}
	return rec
}
