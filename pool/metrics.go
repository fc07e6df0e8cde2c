package pool

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts the outcomes of pool operations. One Metrics may serve many
// Pools; register it once with a Prometheus registry.
type Metrics struct {
	releases *prometheus.CounterVec
	doubles  *prometheus.CounterVec
	acquires *prometheus.CounterVec
	renewals *prometheus.CounterVec
	reaped   prometheus.Counter
}

// NewMetrics returns counters, all at zero, not yet registered anywhere.
func NewMetrics() *Metrics {
	return &Metrics{
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_release_total",
			Help: "Executor releases by outcome (released, already_in_pool, stale_lease, not_leased) and path.",
		}, []string{"outcome", "path"}),
		doubles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_double_release_total",
			Help: "Releases of an executor that was already available or leased by another eval; each was absorbed.",
		}, []string{"path"}),
		acquires: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_acquire_total",
			Help: "Acquire calls by outcome (acquired, reentered, none).",
		}, []string{"outcome"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_renew_total",
			Help: "Lease renewals by outcome (renewed, lost).",
		}, []string{"outcome"}),
		reaped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "evalpool_reaped_total",
			Help: "Expired leases reclaimed by Reap.",
		}),
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.releases, m.doubles, m.acquires, m.renewals, m.reaped}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}
