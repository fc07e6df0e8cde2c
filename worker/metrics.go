package worker

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what a worker does with evals and cleanups. Release
// outcomes are the pool's (pool.Metrics).
type Metrics struct {
	evals            *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	cleanupsEnqueued *prometheus.CounterVec
	poolLost         *prometheus.CounterVec
	executorWait     *prometheus.HistogramVec
	verdicts         executorVec
	rewinds          *prometheus.CounterVec
	clockSteps       *prometheus.CounterVec
	redisUsed        prometheus.Gauge
	redisMax         prometheus.Gauge
	runEnds          *prometheus.CounterVec
	unrecorded       prometheus.Gauge
	unauthorized     executorVec
}

// MetricsOptions configure Metrics. The zero value is the default.
type MetricsOptions struct {
	// PerExecutor labels the evalpool_executor_* counters with each
	// executor's URL: a series per executor (and verdict), which a pool of
	// thousands of executors turns into a scrape of megabytes. Defaults to
	// off: those counters have a series per pool, and the pool's own
	// gauges and logs name the executors.
	PerExecutor bool
}

// executorVec is a counter vector whose executor label exists only with
// MetricsOptions.PerExecutor: without it, WithLabelValues leaves the
// executor out and counts in the pool's series.
type executorVec struct {
	vec         *prometheus.CounterVec
	perExecutor bool
}

func newExecutorVec(opts prometheus.CounterOpts, perExecutor bool, labels ...string) executorVec {
	names := []string{"pool"}
	if perExecutor {
		names = append(names, "executor")
	}
	names = append(names, labels...)
	return executorVec{vec: prometheus.NewCounterVec(opts, names), perExecutor: perExecutor}
}

// WithLabelValues is the counter of the pool, the executor and the other
// labels, in order.
func (v executorVec) WithLabelValues(pool, executor string, labels ...string) prometheus.Counter {
	if v.perExecutor {
		return v.vec.WithLabelValues(append([]string{pool, executor}, labels...)...)
	}
	return v.vec.WithLabelValues(append([]string{pool}, labels...)...)
}

// NewMetrics returns the worker's metrics with the default options, not yet
// registered anywhere.
func NewMetrics() *Metrics { return NewMetricsWith(MetricsOptions{}) }

// NewMetricsWith returns the worker's metrics configured by opts, not yet
// registered anywhere.
func NewMetricsWith(opts MetricsOptions) *Metrics {
	return &Metrics{
		evals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_eval_attempts_total",
			Help: "Eval attempts by outcome (passed, failed, error, busy, cancelled, no_executor, bad_payload; handed back without spending a retry: unauthorized, slow_path, clock).",
		}, []string{"pool", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "evalpool_eval_duration_seconds",
			Help:    "Time an eval attempt held its executor, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 10),
		}, []string{"pool", "outcome"}),
		cleanupsEnqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_cleanup_enqueued_total",
			Help: "Cleanup enqueues by path and result (enqueued, duplicate, error).",
		}, []string{"pool", "path", "result"}),
		poolLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_pool_data_lost_total",
			Help: "Times a worker saw its pool's data vanish (its epoch marker gone or changed): FLUSHALL, eviction, a Redis restart without persistence. Alert on any increase.",
		}, []string{"pool"}),
		executorWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "evalpool_executor_wait_seconds",
			Help:    "Time an attempt waited in the wait list before an executor was handed to it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
		}, []string{"pool"}),
		verdicts: newExecutorVec(prometheus.CounterOpts{
			Name: "evalpool_executor_verdicts_total",
			Help: "Eval attempts by what their executor made of them: passed, failed (graded), unavailable (the executor did not serve the call). By executor too with per-executor metrics on.",
		}, opts.PerExecutor, "verdict"),
		rewinds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_redis_rewinds_total",
			Help: "Times a worker saw its pool's generation go back: Redis's data was rewound (a snapshot restored, a failover to a lagging replica). Alert on any increase.",
		}, []string{"pool"}),
		clockSteps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_redis_clock_steps_total",
			Help: "Steps of Redis's clock that a worker saw the pool take out of its time.",
		}, []string{"pool"}),
		redisUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "evalpool_redis_memory_used_bytes",
			Help: "Redis's used_memory (INFO memory), read every reap interval; of a cluster, its fullest master's.",
		}),
		redisMax: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "evalpool_redis_maxmemory_bytes",
			Help: "Redis's maxmemory (0: no limit), beside evalpool_redis_memory_used_bytes. At the limit Redis refuses what grows memory: no eval starts and nothing is submitted; releases and reaps still run.",
		}),
		runEnds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_run_ends_late_total",
			Help: "Eval ends recorded in their run after the first write failed: recorded_late (by the worker that ran the eval) or reconciled (from Asynq's state by the maintenance work).",
		}, []string{"how"}),
		unrecorded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "evalpool_run_ends_unrecorded",
			Help: "Eval ends this worker could not yet write to their run, and retries every reap interval.",
		}),
		unauthorized: newExecutorVec(prometheus.CounterOpts{
			Name: "evalpool_executor_unauthorized_total",
			Help: "Calls an executor refused with 401: this worker's executor secret is not the executor's. Each attempt goes back to its queue without spending a retry. Alert on any increase. By executor too with per-executor metrics on.",
		}, opts.PerExecutor),
	}
}

// Collectors lists the metrics, for a Prometheus registry:
// reg.MustRegister(m.Collectors()...).
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.evals, m.duration, m.cleanupsEnqueued, m.poolLost, m.executorWait, m.verdicts.vec, m.rewinds, m.clockSteps, m.redisUsed, m.redisMax, m.runEnds, m.unrecorded, m.unauthorized.vec}
}
