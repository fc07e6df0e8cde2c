// Package dashboard serves what people look at: a live page of the pool's
// executors, Asynqmon for the queues, the pool as JSON, and Prometheus
// metrics, from the Go binary alone (no Node build at run time).
package dashboard

import (
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynq/x/metrics"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/pool"
)

//go:embed index.html
var indexHTML []byte

// MonitoringPath is where Asynqmon is mounted.
const MonitoringPath = "/monitoring"

// Options configure a dashboard.
type Options struct {
	// Pool is the pool the page shows. Required.
	Pool *pool.Pool
	// Redis is the client the queue metrics read with. Required.
	Redis redis.UniversalClient
	// Asynqmon connects Asynqmon to Redis. It gets a connection of its own
	// because Asynqmon closes it when the dashboard closes. Required.
	Asynqmon asynq.RedisConnOpt
	// Registry collects the metrics served at /metrics; the dashboard adds
	// the pool's state gauges and Asynq's queue metrics to it. Defaults to a
	// new registry.
	Registry *prometheus.Registry
	// Logger receives request errors. Defaults to discarding.
	Logger *zerolog.Logger
}

func (o *Options) validate() error {
	switch {
	case o.Pool == nil:
		return errors.New("dashboard: Options.Pool is required")
	case o.Redis == nil:
		return errors.New("dashboard: Options.Redis is required")
	case o.Asynqmon == nil:
		return errors.New("dashboard: Options.Asynqmon is required")
	}
	return nil
}

// Dashboard is an http.Handler for the pool page (/), /api/pool,
// /monitoring/ (Asynqmon), /metrics and /healthz.
type Dashboard struct {
	opts Options
	log  zerolog.Logger
	mux  *http.ServeMux
	mon  *asynqmon.HTTPHandler
}

// New builds a dashboard. Close it to release Asynqmon's connection.
func New(opts Options) (*Dashboard, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	d := &Dashboard{opts: opts, log: zerolog.Nop(), mux: http.NewServeMux()}
	if opts.Logger != nil {
		d.log = *opts.Logger
	}
	insp := asynq.NewInspectorFromRedisClient(opts.Redis)
	if err := opts.Registry.Register(pool.NewStateCollector(opts.Pool)); err != nil {
		return nil, err
	}
	if err := opts.Registry.Register(metrics.NewQueueMetricsCollector(insp)); err != nil {
		return nil, err
	}
	_ = opts.Registry.Register(collectors.NewGoCollector())
	d.mon = asynqmon.New(asynqmon.Options{RootPath: MonitoringPath, RedisConnOpt: opts.Asynqmon})
	d.mux.Handle(MonitoringPath+"/", d.mon)
	d.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	d.mux.HandleFunc("GET /api/pool", d.apiPool)
	d.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	d.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(indexHTML)
	})
	return d, nil
}

// ServeHTTP implements http.Handler.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.mux.ServeHTTP(w, r) }

// Close releases Asynqmon's Redis connection.
func (d *Dashboard) Close() error { return d.mon.Close() }

// PoolView is the body of /api/pool: the pool's status, with where to find
// an eval's task in Asynqmon.
type PoolView struct {
	*pool.Status
	MonitoringPath string `json:"monitoring_path"`
}

func (d *Dashboard) apiPool(w http.ResponseWriter, r *http.Request) {
	st, err := d.opts.Pool.Status(r.Context())
	if err != nil {
		d.log.Error().Err(err).Msg("dashboard: pool status")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(PoolView{Status: st, MonitoringPath: MonitoringPath})
}
