package run

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
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
	// in the run's order, with their errors; MoreFailures counts the rest
	// (Results has them all).
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

// binner makes a Histogram of values it is given twice: each one to see
// (their range), then each one to count, once every one was seen.
type binner struct {
	h    Histogram
	seen bool
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func (b *binner) see(v float64) {
	switch {
	case !finite(v):
	case !b.seen:
		b.h.Min, b.h.Max, b.seen = v, v, true
	default:
		b.h.Min, b.h.Max = min(b.h.Min, v), max(b.h.Max, v)
	}
}

func (b *binner) count(v float64) {
	if !finite(v) {
		return
	}
	if b.h.Counts == nil {
		b.h.Counts = make([]int, HistogramBins)
		if b.h.Min == b.h.Max {
			b.h.Counts = make([]int, 1)
		}
	}
	// Halved, so that neither difference overflows (±MaxFloat64); a range
	// that halves to nothing (subnormal) is one bin's.
	n, i := len(b.h.Counts), 0
	if w := b.h.Max/2 - b.h.Min/2; n > 1 && w > 0 {
		i = min(int((v/2-b.h.Min/2)/w*float64(n)), n-1)
	}
	b.h.Counts[i]++
}

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
	// Groups are the groups both runs list (Summary.Groups) with a pass
	// rate, by name.
	Groups []GroupDelta `json:"groups,omitempty"`
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

// Summarize reads a run and sums it up; with against set, it compares it
// with that run, eval key by eval key. O(run size), one read of each
// record.
func (s *Store) Summarize(ctx context.Context, name, against string) (Summary, error) {
	r, recs, running, err := s.Records(ctx, name)
	if err != nil {
		return Summary{}, err
	}
	sum := summarize(r, recs)
	ended := make(map[string]bool, len(recs))
	for _, rec := range recs {
		ended[rec.Key] = true
	}
	for key := range running {
		if !ended[key] {
			sum.Running++
		}
	}
	sum.Pending = max(0, sum.Size-sum.Done()-sum.Running)
	if sum.Share, err = s.Share(ctx, name); err != nil {
		return Summary{}, err
	}
	if against != "" {
		o, other, _, err := s.Records(ctx, against)
		if err != nil {
			return Summary{}, fmt.Errorf("compare with %s: %w", against, err)
		}
		sum.Compare = compare(against, recs, other)
		measure(sum.Compare, sum, summarize(o, other))
	}
	return sum, nil
}

// summarize sums up the ended evals recs of r: all of Summary but Running,
// Pending and Compare.
func summarize(r Run, recs []Record) Summary {
	sum := Summary{Name: r.Name, Pool: r.Pool, CreatedAt: r.CreatedAt, Failures: []Failure{}}
	sum.Size, sum.Submission, sum.Enqueued, sum.Meta, sum.Epochs = r.Size, r.Submission, r.Enqueued, r.Meta, r.Epochs
	var (
		all               Outcomes
		scores, durations []float64
		samples           []*sample // in the run's order, so that sums add up the same each time
		byKey             = make(map[string]*sample, len(recs))
		groups            = map[string]*GroupSummary{}
		scoreBins         binner
		metricBins        = map[string]*binner{}
	)
	for _, rec := range recs {
		all.add(rec.Status)
		sum.Retries += rec.Retries
		switch {
		case rec.Status != Failed && rec.Status != Errored:
		case len(sum.Failures) < MaxSummaryFailures:
			sum.Failures = append(sum.Failures, Failure{Record: rec, Reason: rec.Reason()})
		default:
			sum.MoreFailures++
		}
		if rec.Score != nil {
			scores = append(scores, *rec.Score)
		}
		if rec.Status == Passed || rec.Status == Failed {
			durations = append(durations, rec.Duration)
			if rec.Score != nil {
				scoreBins.see(*rec.Score)
			}
			for name, v := range rec.Metrics {
				b := metricBins[name]
				if b == nil {
					b = &binner{}
					metricBins[name] = b
				}
				b.see(v)
			}
		}
		sm := byKey[rec.SampleKey()]
		if sm == nil {
			sm = &sample{group: rec.Group}
			byKey[rec.SampleKey()] = sm
			samples = append(samples, sm)
		}
		sm.add(rec)
		if rec.Group != "" {
			g := groups[rec.Group]
			if g == nil {
				g = &GroupSummary{Group: rec.Group}
				groups[rec.Group] = g
			}
			g.add(rec.Status)
		}
	}
	sum.Passed, sum.Failed, sum.Errored, sum.Cancelled = all.Passed, all.Failed, all.Errored, all.Cancelled
	sum.PassRate = all.passRate()
	if len(scores) > 0 {
		var m mean
		for _, v := range scores {
			m.add(v)
		}
		avg, median := m.value(), quantile(scores, 0.5)
		sum.MeanScore, sum.MedianScore = &avg, &median
	}
	if len(durations) > 0 {
		sum.DurationP50, sum.DurationP95 = quantile(durations, 0.5), quantile(durations, 0.95)
	}
	// The bins need the range of the values first: a second loop over the
	// records in hand, O(run) with nothing kept but the bins.
	for _, rec := range recs {
		if rec.Status != Passed && rec.Status != Failed {
			continue
		}
		if rec.Score != nil {
			scoreBins.count(*rec.Score)
		}
		for name, v := range rec.Metrics {
			metricBins[name].count(v)
		}
	}
	if scoreBins.seen {
		sum.ScoreHistogram = &scoreBins.h
	}
	for name, b := range metricBins {
		if !b.seen {
			continue
		}
		if sum.MetricHistograms == nil {
			sum.MetricHistograms = make(map[string]Histogram, len(metricBins))
		}
		sum.MetricHistograms[name] = b.h
	}

	var (
		overall         measures
		byGroup         = make(map[string]*measures, len(groups))
		at1             float64
		at1N, atK, atKN int
	)
	for _, sm := range samples {
		overall.add(sm)
		if sm.group != "" {
			m := byGroup[sm.group]
			if m == nil {
				m = &measures{}
				byGroup[sm.group] = m
			}
			m.add(sm)
		}
		if sm.ended > 0 {
			at1 += float64(sm.passed) / float64(sm.ended)
			at1N++
		}
		if sm.ended == r.Epochs {
			atKN++
			if sm.passed > 0 {
				atK++
			}
		}
	}
	sum.Score, sum.Metrics = overall.stats()
	if r.Epochs > 1 && at1N > 0 {
		v := at1 / float64(at1N)
		sum.PassAt1 = &v
	}
	if r.Epochs > 1 && atKN > 0 {
		v := float64(atK) / float64(atKN)
		sum.PassAtK = &v
	}
	for i, name := range slices.Sorted(maps.Keys(groups)) {
		if i == MaxSummaryGroups {
			sum.MoreGroups = len(groups) - i
			break
		}
		g := groups[name]
		g.PassRate = g.passRate()
		if m := byGroup[name]; m != nil {
			g.Score, g.Metrics = m.stats()
		}
		sum.Groups = append(sum.Groups, *g)
	}
	return sum
}

// sample is the ended epochs of one suite eval (one eval when the run has
// no epochs).
type sample struct {
	group   string
	score   mean
	metrics map[string]mean
	// passed and ended count its epochs that passed, and that ended other
	// than cancelled.
	passed, ended int
}

func (sm *sample) add(rec Record) {
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

func (ms *measures) add(sm *sample) {
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
		}
		m.add(v.value())
	}
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

// compare lists the keys that passed in before and fail (or errored) now,
// and the other way round. Keys in only one run are neither.
func compare(against string, now, before []Record) *Comparison {
	was := map[string]string{}
	for _, rec := range before {
		was[rec.Key] = rec.Status
	}
	c := &Comparison{Against: against, NewlyFailing: []string{}, NewlyPassing: []string{}}
	bad := func(status string) bool { return status == Failed || status == Errored }
	for _, rec := range now {
		switch prev, ok := was[rec.Key]; {
		case !ok:
		case prev == Passed && bad(rec.Status):
			c.NewlyFailing = append(c.NewlyFailing, rec.Key)
		case bad(prev) && rec.Status == Passed:
			c.NewlyPassing = append(c.NewlyPassing, rec.Key)
		}
	}
	return c
}

// measure adds to c the deltas of the pass rate, of the metrics both runs
// have and of the pass rates of the groups both have, from before to now.
func measure(c *Comparison, now, before Summary) {
	// A difference of two finite means can overflow (1e308 and -1e308):
	// it saturates, as JSON has no infinity.
	delta := func(b, a float64) Delta {
		d := a - b
		if math.IsInf(d, 0) {
			d = math.Copysign(math.MaxFloat64, d)
		}
		return Delta{Before: b, After: a, Delta: d}
	}
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
	was := make(map[string]float64, len(before.Groups))
	for _, g := range before.Groups {
		was[g.Group] = g.PassRate
	}
	for _, g := range now.Groups {
		if b, ok := was[g.Group]; ok && b >= 0 && g.PassRate >= 0 {
			c.Groups = append(c.Groups, GroupDelta{Group: g.Group, PassRate: delta(b, g.PassRate)})
		}
	}
}

// quantile is the q-quantile of vs by the nearest rank; vs is sorted in
// place.
func quantile(vs []float64, q float64) float64 {
	slices.Sort(vs)
	i := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(0, min(i, len(vs)-1))]
}
