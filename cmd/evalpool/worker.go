package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

func (a *app) workerCommand() *cobra.Command {
	var (
		cfg         evalpool.WorkerConfig
		cleanup     string
		metricsAddr string
		retryDelay  time.Duration
		secretFlag  string
		perExecutor bool
	)
	c := &cobra.Command{
		Use:   "worker",
		Short: "Process evals, cleanups and reaps until SIGINT or SIGTERM",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := a.redis()
			if err != nil {
				return err
			}
			if err := movedToPoolConfig(c); err != nil {
				return err
			}
			// --pool a,b serves several pools; the worker refuses a task of any other.
			cfg.Pools = strings.Split(a.poolName, ",")
			// The secret is never a flag default: cobra would print it in
			// the usage text.
			secret, err := serviceSecret("worker: the executor secret", secretFlag, executor.EnvSecret)
			if err != nil {
				return err
			}
			if secret == "" {
				a.log.Warn().Msg("no executor secret (--executor-secret, or " + executor.EnvSecret + "): calls to executors are not signed, and the worker refuses to start if an executor requires one")
			}
			cfg.Executor = &executor.Client{Secret: []byte(secret)}
			cfg.Cleanup, cfg.Logger = worker.CleanupMode(cleanup), &a.log
			cfg.Metrics = worker.NewMetricsWith(worker.MetricsOptions{PerExecutor: perExecutor})
			if cfg.ExecutorWait == 0 {
				cfg.ExecutorWait = -1 // the flag's 0 is no wait; the option's 0 is its default
			}
			cfg.RetryDelay = worker.ExponentialBackoff(retryDelay, worker.MaxRetryDelay)
			w, err := evalpool.NewWorker(client, cfg)
			if err != nil {
				return usageError{err}
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(w.Collectors()...)
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			l, err := a.listenMetrics(metricsAddr)
			if err != nil {
				return err
			}
			ctx, stop := context.WithCancel(c.Context())
			defer stop()
			var wg sync.WaitGroup
			if l != nil {
				wg.Go(func() { serveHTTP(ctx, l, metricsHandler(reg), &a.log) })
			}
			err = w.Run(ctx)
			stop()
			wg.Wait()
			return err
		},
	}
	f := c.Flags()
	f.IntVar(&cfg.Concurrency, "concurrency", worker.DefaultConcurrency, "tasks processed at once")
	f.StringVar(&cleanup, "cleanup", string(worker.CleanupOutcome), "how each eval's executor is released: outcome (a cleanup task for its outcome), both (both cleanup tasks), or inline (in the handler; a task only if that fails)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at ADDR/metrics (e.g. :9090); off when empty")
	f.BoolVar(&perExecutor, "per-executor-metrics", false, "label the evalpool_executor_* counters with each executor: a series per executor, a large scrape for a large pool")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", tasks.DefaultLeaseTTL, "executor lease TTL for evals that name none; renewed every TTL/3, so at least three round trips to the farthest executor (the worker names a longer one when it sees one)")
	f.DurationVar(&cfg.ReapInterval, "reap-interval", worker.DefaultReapInterval, "how often the pool is reaped (once per interval across workers)")
	f.DurationVar(&cfg.PollInterval, "poll-interval", worker.DefaultPollInterval, "how often an idle worker looks at empty queues and due retries")
	f.DurationVar(&cfg.ExecutorWait, "executor-wait", worker.DefaultExecutorWait, "how long an eval waits in the pool's FIFO wait list before its task goes back to the queue, keeping its place; 0 for no wait")
	f.DurationVar(&retryDelay, "retry-delay", worker.DefaultRetryDelay, "first retry delay of an eval that errored or found its executor unavailable, doubling per retry up to 10m")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", worker.DefaultShutdownTimeout, "how long a stopping worker waits for running evals")
	f.StringVar(&secretFlag, "executor-secret", "", "secret shared with the executors, to sign every call, 16 bytes at least (env "+executor.EnvSecret+", which keeps it out of ps, or a file named by "+executor.EnvSecret+"_FILE)")
	f.BoolVar(&cfg.AllowEvictingRedis, "allow-evicting-redis", false, "start even on a Redis whose maxmemory-policy may evict the pool's keys")
	for _, name := range poolSettingFlags {
		f.String(name, "", "")
		_ = f.MarkHidden(name)
	}
	f.DurationVar(&cfg.ProbeTimeout, "probe-timeout", worker.DefaultProbeTimeout, "time limit of one health probe")
	return c
}

// poolSettingFlags were the worker's, and are the pool's settings now.
var poolSettingFlags = []string{"quarantine-after", "quarantine-on-fail-rate", "probe-interval"}

// movedToPoolConfig refuses a worker started with a pool setting's flag
// (a command line written for an older worker): applied per process, two
// workers could disagree, and ignored, it would fail silently.
func movedToPoolConfig(c *cobra.Command) error {
	for _, name := range poolSettingFlags {
		if f := c.Flags().Lookup(name); f.Changed {
			return usagef("--%s is a setting of the pool now, which every worker applies: `evalpool pool config --%s %s`", name, name, f.Value)
		}
	}
	return nil
}

// listenMetrics listens on --metrics-addr; nil when it is empty.
func (a *app) listenMetrics(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	a.log.Info().Str("addr", l.Addr().String()).Msg("metrics at /metrics")
	return l, nil
}

// metricsHandler serves /metrics and /healthz, with no token: the address
// is meant for a private network (a compose network, a pod), where
// Prometheus scrapes it, and carries counts, not evals or secrets.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}

// serveHTTP serves h on l until ctx is done, then shuts down gracefully and
// returns once the server has stopped.
func serveHTTP(ctx context.Context, l net.Listener, h http.Handler, log *zerolog.Logger) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str("addr", l.Addr().String()).Msg("http server failed")
		}
	}()
	select {
	case <-ctx.Done():
	case <-done:
		return
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	<-done
}
