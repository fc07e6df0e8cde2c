package run

import (
	"math"
	"time"
)

// Summary is how a run went.
type Summary struct {
	Name      string    `json:"name"`
	Pool      string    `json:"pool"`
	CreatedAt time.Time `json:"created_at"`
	// Submission and Enqueued are the run's (Run): Incomplete means some
	// of the pending evals may never have been enqueued.
	Submission string `json:"submission"`
	Enqueued   int    `json:"enqueued,omitempty"`
	// Meta and Epochs are the run's (Run).
	Meta   map[string]string `json:"meta,omitempty"`
	Epochs int               `json:"epochs"`
	// Share is what the run asked of its pool, and has of it now; its
	// executors held now are Counts.Running.
	Share Share `json:"share"`
	Counts
	// PassRate is passed over passed, failed and errored; -1 before any
	// ended. Cancelled evals do not count.
	PassRate float64 `json:"pass_rate"`
	// MeanScore and MedianScore are over every ended eval with a score.
	MeanScore   *float64 `json:"mean_score,omitempty"`
	MedianScore *float64 `json:"median_score,omitempty"`
	// Score and Metrics are the graded evals' (passed and failed) score
	// and each metric, over those that answered it (Stat); nil before any
	// did.
	Score   *Stat           `json:"score,omitempty"`
	Metrics map[string]Stat `json:"metrics,omitempty"`
	// MetricsLeftOut counts the values of metrics past the run's first
	// MaxRunMetrics names, left out of Metrics and MetricHistograms.
	MetricsLeftOut int `json:"metrics_left_out,omitempty"`
	// ScoreHistogram and MetricHistograms bin the graded evals' scores and
	// each metric's values (Histogram), eval by eval (each epoch is one);
	// a value that is not finite is left out. nil before any.
	ScoreHistogram   *Histogram           `json:"score_histogram,omitempty"`
	MetricHistograms map[string]Histogram `json:"metric_histograms,omitempty"`
	// PassAt1 and PassAtK are set in a run of several epochs, once some
	// sample can tell. PassAt1 is the mean over the samples of the share
	// of their epochs that passed, among those that ended other than
	// cancelled. PassAtK, k being Epochs, is the share of samples with an
	// epoch that passed, among those whose every epoch ended, none
	// cancelled.
	PassAt1 *float64 `json:"pass_at_1,omitempty"`
	PassAtK *float64 `json:"pass_at_k,omitempty"`
	// Groups sum up each group of the run's ended evals: the first
	// MaxSummaryGroups by name, and MoreGroups counts the rest. None when
	// no eval has a group; an eval without one is in none.
	Groups     []GroupSummary `json:"groups,omitempty"`
	MoreGroups int            `json:"more_groups,omitempty"`
	// DurationP50 and DurationP95 are of the graded evals' last attempts,
	// in seconds.
	DurationP50 float64 `json:"duration_p50_seconds"`
	DurationP95 float64 `json:"duration_p95_seconds"`
	Retries     int     `json:"retries"`
	// Failures are the first MaxSummaryFailures failed and errored evals,
	// in the order they ended, with why (listed less their output, stdout
	// and stderr, their errors clipped to MaxFailureError); MoreFailures
	// counts the rest (Results has them all, whole).
	Failures     []Failure `json:"failures"`
	MoreFailures int       `json:"more_failures,omitempty"`
	// Compare is what changed against another run, when asked.
	Compare *Comparison `json:"compare,omitempty"`
}

// Stat is a measure of a run's evals: the mean of its values, the standard
// error of that mean (the values' sample standard deviation, over n-1,
// divided by √n; 0 under 2 values), and n. In a run of several epochs a
// value is a sample's: the mean of the epochs of one suite eval, since the
// repeats of one eval are not independent draws; n counts samples.
type Stat struct {
	Mean   float64 `json:"mean"`
	Stderr float64 `json:"stderr"`
	N      int     `json:"n"`
}

// HistogramBins is how many bins a Histogram has, unless its values are
// all the same.
const HistogramBins = 20

// Histogram counts values in equal bins from Min to Max: HistogramBins of
// them, or one when Min == Max. Bin i holds the values from Min + i·w up
// to the next bin's start, w being (Max-Min)/len(Counts); the last bin
// holds Max too.
type Histogram struct {
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Counts []int   `json:"counts"`
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// Outcomes counts how a set of evals ended.
type Outcomes struct {
	Passed    int `json:"passed"`
	Failed    int `json:"failed"`
	Errored   int `json:"errored"`
	Cancelled int `json:"cancelled"`
}

func (o *Outcomes) add(status string) {
	switch status {
	case Passed:
		o.Passed++
	case Failed:
		o.Failed++
	case Errored:
		o.Errored++
	case Cancelled:
		o.Cancelled++
	}
}

// passRate is passed over passed, failed and errored; -1 before any.
func (o Outcomes) passRate() float64 {
	if n := o.Passed + o.Failed + o.Errored; n > 0 {
		return float64(o.Passed) / float64(n)
	}
	return -1
}

// GroupSummary is how the evals of one group went, as Summary has it for
// the run's.
type GroupSummary struct {
	Group string `json:"group"`
	Outcomes
	PassRate float64         `json:"pass_rate"`
	Score    *Stat           `json:"score,omitempty"`
	Metrics  map[string]Stat `json:"metrics,omitempty"`
}

// Failure is a failed or errored eval, with why in one line
// (Record.Reason).
type Failure struct {
	Record
	Reason string `json:"reason"`
}

// MaxSummaryGroups bounds a Summary's Groups, so that a suite of 100,000
// groups (one per task) still sums up small.
const MaxSummaryGroups = 200

// MaxSummaryFailures bounds a Summary's Failures, so that a summary stays
// small whatever the run (100,000 failures with their errors and outputs
// made one of 16 MB).
const MaxSummaryFailures = 100

// Comparison is what changed between two runs: the evals (by key) whose
// outcome changed, and the measures both runs have.
type Comparison struct {
	Against      string   `json:"against"`
	NewlyFailing []string `json:"newly_failing"`
	NewlyPassing []string `json:"newly_passing"`
	// PassRate is nil while either run has none.
	PassRate *Delta           `json:"pass_rate,omitempty"`
	Metrics  map[string]Delta `json:"metrics,omitempty"`
	// Groups are the groups both runs have a pass rate of, every one of
	// them weighed: the MaxSummaryGroups whose pass rate changed most, by
	// name; MoreGroups counts the rest.
	Groups     []GroupDelta `json:"groups,omitempty"`
	MoreGroups int          `json:"more_groups,omitempty"`
}

// Delta is a measure in the run compared with (Before) and in the run
// (After): Delta is After - Before. Of a Stat, it is of the means.
type Delta struct {
	Before float64 `json:"before"`
	After  float64 `json:"after"`
	Delta  float64 `json:"delta"`
}

// GroupDelta is a group's pass rate in both runs.
type GroupDelta struct {
	Group    string `json:"group"`
	PassRate Delta  `json:"pass_rate"`
}

// sample is the ended epochs of one suite eval (one eval when the run has
// no epochs).
type sample struct {
	// group is the first its epochs name.
	group   string
	score   mean
	metrics map[string]mean
	// passed and ended count its epochs that passed, and that ended other
	// than cancelled; seen counts every epoch that ended.
	passed, ended, seen int
}

func (sm *sample) add(rec Record) {
	sm.seen++
	if sm.group == "" {
		sm.group = rec.Group
	}
	if rec.Status == Cancelled {
		return
	}
	sm.ended++
	if rec.Status == Passed {
		sm.passed++
	}
	if rec.Status != Passed && rec.Status != Failed {
		return
	}
	if rec.Score != nil {
		sm.score.add(*rec.Score)
	}
	for name, v := range rec.Metrics {
		if sm.metrics == nil {
			sm.metrics = make(map[string]mean, len(rec.Metrics))
		}
		m := sm.metrics[name]
		m.add(v)
		sm.metrics[name] = m
	}
}

// mean is a running mean of values. It is updated as a weighted mean, not
// kept as a sum: a grader's values are any finite float64 (a perplexity of
// 1e200), and a sum of them could overflow where their mean cannot.
type mean struct {
	avg float64
	n   int
}

func (m *mean) add(v float64) {
	m.n++
	m.avg = m.avg*(float64(m.n-1)/float64(m.n)) + v/float64(m.n)
}

func (m mean) value() float64 { return m.avg }

// measures accumulates the score and metrics of samples, to Stats.
type measures struct {
	score   moments
	metrics map[string]*moments
}

// add adds sm's measures; it returns how many metrics' moments it made.
func (ms *measures) add(sm *sample) (made int) {
	if sm.score.n > 0 {
		ms.score.add(sm.score.value())
	}
	for name, v := range sm.metrics {
		if ms.metrics == nil {
			ms.metrics = map[string]*moments{}
		}
		m := ms.metrics[name]
		if m == nil {
			m = &moments{}
			ms.metrics[name] = m
			made++
		}
		m.add(v.value())
	}
	return made
}

// clone is a copy of ms to add to, ms unchanged.
func (ms *measures) clone() *measures {
	c := &measures{score: ms.score}
	if ms.metrics != nil {
		c.metrics = make(map[string]*moments, len(ms.metrics))
		for name, m := range ms.metrics {
			mc := *m
			c.metrics[name] = &mc
		}
	}
	return c
}

func (ms *measures) stats() (*Stat, map[string]Stat) {
	var score *Stat
	if ms.score.n > 0 {
		st := ms.score.stat()
		score = &st
	}
	var metrics map[string]Stat
	for name, m := range ms.metrics {
		if metrics == nil {
			metrics = make(map[string]Stat, len(ms.metrics))
		}
		metrics[name] = m.stat()
	}
	return score, metrics
}

// moments are the count, mean and sum of squared deviations of values,
// added one at a time (Welford's method: no sum of squares to lose
// precision in), kept in units of the largest magnitude seen (scale), so
// that values as far apart as ±1e308 square without overflow: a Stat is
// always finite, as JSON needs.
type moments struct {
	n        int
	scale    float64
	mean, m2 float64 // in units of scale
}

func (m *moments) add(v float64) {
	if a := math.Abs(v); a > m.scale {
		r := m.scale / a
		m.mean, m.m2, m.scale = m.mean*r, m.m2*r*r, a
	}
	x := 0.0
	if m.scale > 0 {
		x = v / m.scale
	}
	m.n++
	d := x - m.mean
	m.mean += d / float64(m.n)
	m.m2 += d * (x - m.mean)
}

func (m moments) stat() Stat {
	st := Stat{Mean: m.mean * m.scale, N: m.n}
	if m.n > 1 {
		st.Stderr = math.Sqrt(m.m2/float64(m.n-1)/float64(m.n)) * m.scale
	}
	return st
}

// delta is a measure from b to a. A difference of two finite means can
// overflow (1e308 and -1e308): it saturates, as JSON has no infinity.
func delta(b, a float64) Delta {
	d := a - b
	if math.IsInf(d, 0) {
		d = math.Copysign(math.MaxFloat64, d)
	}
	return Delta{Before: b, After: a, Delta: d}
}

// measure adds to c the deltas of the pass rate and of the metrics both
// runs have, from before to now.
func measure(c *Comparison, now, before Summary) {
	if now.PassRate >= 0 && before.PassRate >= 0 {
		d := delta(before.PassRate, now.PassRate)
		c.PassRate = &d
	}
	for name, st := range now.Metrics {
		if b, ok := before.Metrics[name]; ok {
			if c.Metrics == nil {
				c.Metrics = map[string]Delta{}
			}
			c.Metrics[name] = delta(b.Mean, st.Mean)
		}
	}
}

// quantile is the q-quantile of vs, sorted, by the nearest rank.
func quantile(vs []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(0, min(i, len(vs)-1))]
}
