package evalpool

import (
	"github.com/hibiken/asynq"
	"github.com/hibiken/asynq/x/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/worker"
)

// WorkerConfig configures a Worker: the pools it serves, and how it runs
// (worker.Config, whose zero value is usable).
type WorkerConfig struct {
	// Pools names the pools whose evals the worker runs: it serves their
	// queues and no other. Defaults to pool.DefaultName alone.
	Pools []string
	// PoolMetrics counts the operations on the pools. Defaults to a set of
	// the worker's own, among its Collectors.
	PoolMetrics *pool.Metrics
	worker.Config
}

// Worker runs the evals of its pools until Run's context ends; it is
// worker.Worker, with the metrics of everything it is made of.
type Worker struct {
	*worker.Worker
	collectors []prometheus.Collector
}

// NewWorker returns a worker on rdb; Run starts it. It does not touch
// Redis. A pool's settings (grace, quarantine) are the pool's, in Redis:
// see pool.Settings.
func NewWorker(rdb redis.UniversalClient, cfg WorkerConfig) (*Worker, error) {
	if rdb == nil {
		return nil, ErrNoRedis
	}
	names := cfg.Pools
	if len(names) == 0 {
		names = []string{pool.DefaultName}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = worker.NewMetrics()
	}
	poolMetrics := cfg.PoolMetrics
	if poolMetrics == nil {
		poolMetrics = pool.NewMetrics()
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	parts := worker.Parts{Redis: rdb, Asynq: asynq.NewClientFromRedisClient(rdb), Inspector: insp, Runs: run.NewStore(rdb, run.Options{})}
	collectors := append(poolMetrics.Collectors(), cfg.Metrics.Collectors()...)
	for _, name := range names {
		p, err := pool.New(rdb, pool.Options{Name: name, Logger: cfg.Logger, Metrics: poolMetrics})
		if err != nil {
			return nil, err
		}
		parts.Pools = append(parts.Pools, p)
		collectors = append(collectors, pool.NewStateCollector(p))
	}
	w, err := worker.New(parts, cfg.Config)
	if err != nil {
		return nil, err
	}
	return &Worker{Worker: w, collectors: append(collectors, metrics.NewQueueMetricsCollector(insp))}, nil
}

// Collectors are the worker's Prometheus metrics: its evals and cleanups,
// its pools' operations and state (a gauge set per pool), and Asynq's
// queues. Register them once: reg.MustRegister(w.Collectors()...).
func (w *Worker) Collectors() []prometheus.Collector { return w.collectors }
