package pool

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics counts the outcomes of pool operations. One Metrics may serve many
// Pools; register it once with a Prometheus registry.
type Metrics struct {
	releases *prometheus.CounterVec
	doubles  *prometheus.CounterVec
	acquires *prometheus.CounterVec
	renewals *prometheus.CounterVec
	reaped   *prometheus.CounterVec
	// Every metric carries the pool's name.
	quarantines *prometheus.CounterVec
	returns     *prometheus.CounterVec
	probes      *prometheus.CounterVec
}

// NewMetrics returns counters, all at zero, not yet registered anywhere.
func NewMetrics() *Metrics {
	return &Metrics{
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_release_total",
			Help: "Executor releases by outcome (released; duplicate: a lease's designed second path; already_in_pool, stale_lease, not_leased: double releases) and path (success, failure, error_handler, inline, cli, other).",
		}, []string{"pool", "outcome", "path"}),
		doubles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_double_release_total",
			Help: "Double releases: a release of a lease that is not the caller's, by anything but a cleanup (a late callback replayed, a release by hand), or by the holder of a lease that ended otherwise than by its release (reclaimed, drained); each was absorbed. Alert on any increase. (A lease's second path by a cleanup is outcome=\"duplicate\" of evalpool_release_total, not here.)",
		}, []string{"pool", "path"}),
		acquires: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_acquire_total",
			Help: "Acquire calls by outcome (acquired, reentered, waiting, none, cancelled, unservable, pool_missing).",
		}, []string{"pool", "outcome"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_renew_total",
			Help: "Lease renewals by outcome (renewed, lost).",
		}, []string{"pool", "outcome"}),
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_reaped_total",
			Help: "Expired leases reclaimed by Reap.",
		}, []string{"pool"}),
		quarantines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_quarantines_total",
			Help: "Executors taken out of service, by reason (unavailable, fail_rate, operator).",
		}, []string{"pool", "reason"}),
		returns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_quarantine_returns_total",
			Help: "Quarantined executors returned to service, by whom (probe, operator).",
		}, []string{"pool", "by"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evalpool_probes_total",
			Help: "Health probes of quarantined executors, by result (healthy, unhealthy).",
		}, []string{"pool", "result"}),
	}
}

// Paths a release is counted under: the worker's cleanup paths, the CLI's,
// and other for anything else, so that a caller's path never grows the
// metric's label set.
var metricPaths = map[string]bool{"success": true, "failure": true, "error_handler": true, "inline": true, "cli": true}

func metricPath(path string) string {
	if metricPaths[path] {
		return path
	}
	return "other"
}

// Quarantines returns how many executors were quarantined for reason; an
// empty reason matches all.
func (m *Metrics) Quarantines(reason string) float64 {
	return sum(m.quarantines, map[string]string{"reason": reason})
}

// Releases returns how many releases had the outcome on the path; an empty
// outcome or path matches all. Demos and tests read the counts here.
func (m *Metrics) Releases(outcome ReleaseOutcome, path string) float64 {
	return sum(m.releases, map[string]string{"outcome": string(outcome), "path": path})
}

// Acquires returns how many acquires had the outcome (acquired,
// reentered, none); an empty outcome matches all.
func (m *Metrics) Acquires(outcome string) float64 {
	return sum(m.acquires, map[string]string{"outcome": outcome})
}

// Renewals returns how many lease renewals had the outcome (renewed,
// lost); an empty outcome matches all.
func (m *Metrics) Renewals(outcome string) float64 {
	return sum(m.renewals, map[string]string{"outcome": outcome})
}

// DoubleReleases returns how many double releases came by path; an empty
// path matches all.
func (m *Metrics) DoubleReleases(path string) float64 {
	return sum(m.doubles, map[string]string{"path": path})
}

// sum adds up the counters of vec whose labels match want; an empty wanted
// value matches any.
func sum(vec *prometheus.CounterVec, want map[string]string) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		vec.Collect(ch)
		close(ch)
	}()
	total := 0.0
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		match := true
		for _, l := range d.GetLabel() {
			if v := want[l.GetName()]; v != "" && v != l.GetValue() {
				match = false
			}
		}
		if match {
			total += d.GetCounter().GetValue()
		}
	}
	return total
}

// Collectors lists the metrics, for a Prometheus registry:
// reg.MustRegister(m.Collectors()...).
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.releases, m.doubles, m.acquires, m.renewals, m.reaped, m.quarantines, m.returns, m.probes}
}

// NewStateCollector returns a collector of the pool's executors by state,
// evalpool_executors{pool,state}, read with one O(log N) script per scrape.
// The states are exclusive, so that sum() is the registered total, which
// evalpool_executors_registered also gives.
func NewStateCollector(p *Pool) prometheus.Collector {
	labels := prometheus.Labels{"pool": p.Name()}
	return &stateCollector{pool: p,
		desc: prometheus.NewDesc("evalpool_executors",
			"Executors by state: available, leased (live or expired, a quarantined one still serving its eval among them), draining, quarantined (out of service, idle), lost. Exclusive: they add up to evalpool_executors_registered.",
			[]string{"state"}, labels),
		registered: prometheus.NewDesc("evalpool_executors_registered", "Executors registered in the pool.", nil, labels),
		expired:    prometheus.NewDesc("evalpool_leases_expired", "Leases past their deadline, not yet reclaimed.", nil, labels),
		waiters:    prometheus.NewDesc("evalpool_waiters", "Evals in the pool's wait lists for a free executor.", nil, labels),
	}
}

type stateCollector struct {
	pool                               *Pool
	desc, registered, expired, waiters *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.registered
	ch <- c.expired
	ch <- c.waiters
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	// A scrape carries no context; bound the read so a dead Redis cannot
	// hang it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.pool.Counts(ctx)
	if err != nil {
		for _, d := range []*prometheus.Desc{c.desc, c.registered, c.expired, c.waiters} {
			ch <- prometheus.NewInvalidMetric(d, err)
		}
		return
	}
	for state, v := range map[State]int64{StateAvailable: n.Available, StateLeased: n.Leased, StateDraining: n.Draining, StateQuarantined: n.Quarantined, StateLost: n.Lost} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), string(state))
	}
	ch <- prometheus.MustNewConstMetric(c.registered, prometheus.GaugeValue, float64(n.Registered))
	ch <- prometheus.MustNewConstMetric(c.expired, prometheus.GaugeValue, float64(n.Expired))
	ch <- prometheus.MustNewConstMetric(c.waiters, prometheus.GaugeValue, float64(n.Waiters))
}
