package run

import (
	"cmp"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// tally sums a run up one end at a time, so that summing up a run that
// moves costs the ends since the last time, not the run (the Store keeps
// one a run, live). It only adds: an end taken back (Reopen) needs a new
// tally. A summary of it costs O(groups listed + metrics × bins × log
// evals + samples whose epochs have not all ended), and a merge of the
// values added since the last one into those before, O(evals) in memory.
type tally struct {
	epochs int
	// status is each ended eval's, by key; keys are the ended evals in the
	// order they were added.
	status map[string]string
	keys   []string
	all    Outcomes
	// retries are the evals' retries, and scoreMean their scores' mean.
	retries   int
	scoreMean mean
	// scored are the ended evals' scores, graded the graded evals', and
	// durations the graded evals' last attempts'; metrics are each
	// metric's values over the graded evals.
	scored, graded, durations sorted[float64]
	metrics                   map[string]*sorted[float64]
	groups                    map[string]*groupTally
	groupNames                sorted[string]
	// overall and each group's measures hold the samples whose epochs all
	// ended; open holds the others, by sample key, until they do.
	overall measures
	open    map[string]*sample
	passAt  passAt
	// failures are the first MaxSummaryFailures failed and errored evals
	// added; moreFailures counts the rest.
	failures     []Failure
	moreFailures int
	// metricsLeftOut counts the values of metrics past MaxRunMetrics.
	metricsLeftOut int
	// bytes is what the tally takes in memory, estimated.
	bytes int
}

// groupTally is a group's outcomes, eval by eval, and its measures,
// sample by sample.
type groupTally struct {
	Outcomes
	measures measures
}

func newTally(epochs int) *tally {
	return &tally{epochs: max(epochs, 1), status: map[string]string{}, metrics: map[string]*sorted[float64]{},
		groups: map[string]*groupTally{}, open: map[string]*sample{}}
}

// add counts rec. An eval already counted keeps its first end.
func (t *tally) add(rec Record) {
	if _, ok := t.status[rec.Key]; ok {
		return
	}
	t.status[rec.Key] = rec.Status
	t.keys = append(t.keys, rec.Key)
	t.bytes += endBytes + len(rec.Key)
	rec.Metrics = t.kept(rec)
	t.all.add(rec.Status)
	t.retries += rec.Retries
	if rec.Status == Failed || rec.Status == Errored {
		if len(t.failures) < MaxSummaryFailures {
			f := listedFailure(rec)
			t.failures = append(t.failures, f)
			t.bytes += failureBytes + len(f.Key) + len(f.Error) + len(f.Reason) + len(f.Executor) + len(f.Group) + len(f.Metrics)*valueBytes
		} else {
			t.moreFailures++
		}
	}
	if rec.Score != nil {
		t.scoreMean.add(*rec.Score)
		t.scored.add(*rec.Score)
		t.bytes += valueBytes
	}
	if rec.Status == Passed || rec.Status == Failed {
		t.durations.add(rec.Duration)
		if rec.Score != nil && finite(*rec.Score) {
			t.graded.add(*rec.Score)
		}
		for name, v := range rec.Metrics {
			if finite(v) {
				t.metrics[name].add(v)
			}
		}
		t.bytes += (2 + len(rec.Metrics)) * valueBytes
	}
	if rec.Group != "" {
		g := t.groups[rec.Group]
		if g == nil {
			g = &groupTally{}
			t.groups[rec.Group] = g
			t.groupNames.add(rec.Group)
			t.bytes += nameBytes + 2*len(rec.Group)
		}
		g.add(rec.Status)
	}
	key := t.sampleKey(rec)
	sm := t.open[key]
	if sm == nil {
		sm = &sample{}
		t.open[key] = sm
	}
	sm.add(rec)
	if sm.seen == t.epochs {
		delete(t.open, key)
		t.bytes += momentsBytes * t.close(sm, &t.overall, t.groupMeasures(sm.group), &t.passAt)
	} else {
		t.bytes += nameBytes + len(key) + len(rec.Metrics)*nameBytes
	}
}

// MaxRunMetrics bounds the metrics a run's summary has, and that the runs
// list sums: the first names its graded evals gave, in the order they
// ended (by name within an eval). The others' values are left out, and
// counted (Summary.MetricsLeftOut).
const MaxRunMetrics = 64

// What a tally takes in memory, in bytes, as it estimates it
// (liveRuns.account): by what it holds, beside the lengths of the strings
// it keeps. An end of a key, a score and a duration measured 114 bytes.
const (
	endBytes     = 100 // an eval's status and its place in the order
	valueBytes   = 16  // a value kept sorted, with the merge's slack
	nameBytes    = 120 // a map's entry: a group, a sample, a metric's
	momentsBytes = 120 // a metric's moments in a group or the run's
	failureBytes = 600 // a listed failure, besides its strings
)

// kept is rec's metrics among the run's MaxRunMetrics: a graded eval's new
// name joins them while there is room.
func (t *tally) kept(rec Record) map[string]float64 {
	graded := rec.Status == Passed || rec.Status == Failed
	var out map[string]float64
	for _, name := range slices.Sorted(maps.Keys(rec.Metrics)) {
		if _, ok := t.metrics[name]; !ok {
			if !graded || len(t.metrics) == MaxRunMetrics {
				if graded {
					t.metricsLeftOut++
				}
				continue
			}
			t.metrics[name] = &sorted[float64]{}
			t.bytes += nameBytes + len(name)
		}
		if out == nil {
			out = make(map[string]float64, len(rec.Metrics))
		}
		out[name] = rec.Metrics[name]
	}
	return out
}

// MaxFailureError bounds the error of a failure a summary lists, in
// characters.
const MaxFailureError = 1000

// listedFailure is rec as a summary lists it among its failures, with its
// reason: less its output, stdout and stderr, its error clipped to
// MaxFailureError, so that a summary, and the tally behind it, stay small
// whatever the grader wrote (the eval's page and Results have it whole).
func listedFailure(rec Record) Failure {
	f := Failure{Record: rec, Reason: rec.Reason()}
	f.Output, f.Stdout, f.Stderr = nil, "", ""
	f.Error = clip(f.Error, MaxFailureError)
	return f
}

// sampleKey is rec's sample's: its SampleKey, or in a run of epochs the
// key less a "#epoch" suffix when the record does not say its epoch (a
// cancel's), so that a cancelled epoch counts to its sample's end.
func (t *tally) sampleKey(rec Record) string {
	if rec.Epoch != 0 || t.epochs == 1 {
		return rec.SampleKey()
	}
	if i := strings.LastIndexByte(rec.Key, '#'); i > 0 {
		if e, err := strconv.Atoi(rec.Key[i+1:]); err == nil && e >= 1 && e <= t.epochs {
			return rec.Key[:i]
		}
	}
	return rec.Key
}

func (t *tally) groupMeasures(group string) *measures {
	if g := t.groups[group]; g != nil {
		return &g.measures
	}
	return nil
}

// close adds a sample's measures, to the run's and to its group's when g
// is not nil, and its pass@ counts. It returns how many metrics' moments it
// made.
func (t *tally) close(sm *sample, overall, g *measures, p *passAt) (made int) {
	made = overall.add(sm)
	if g != nil {
		made += g.add(sm)
	}
	if sm.ended > 0 {
		p.at1 += float64(sm.passed) / float64(sm.ended)
		p.at1N++
	}
	if sm.ended == t.epochs {
		p.atKN++
		if sm.passed > 0 {
			p.atK++
		}
	}
	return made
}

// passAt sums the samples' pass@1 (at1, over at1N samples with an epoch
// that ended other than cancelled) and pass@k (atK samples with an epoch
// that passed, of atKN whose every epoch ended, none cancelled).
type passAt struct {
	at1             float64
	at1N, atK, atKN int
}

// summary is the tally as a Summary of r: all of it but Running, Pending,
// Share and Compare.
func (t *tally) summary(r Run) Summary {
	sum := Summary{Name: r.Name, Pool: r.Pool, CreatedAt: r.CreatedAt, Submission: r.Submission, Enqueued: r.Enqueued, Meta: r.Meta, Epochs: r.Epochs,
		Retries: t.retries, Failures: append([]Failure{}, t.failures...), MoreFailures: t.moreFailures, MetricsLeftOut: t.metricsLeftOut}
	sum.Size = r.Size
	sum.Passed, sum.Failed, sum.Errored, sum.Cancelled = t.all.Passed, t.all.Failed, t.all.Errored, t.all.Cancelled
	sum.PassRate = t.all.passRate()
	if scored := t.scored.values(); len(scored) > 0 {
		avg, median := t.scoreMean.value(), quantile(scored, 0.5)
		sum.MeanScore, sum.MedianScore = &avg, &median
	}
	if ds := t.durations.values(); len(ds) > 0 {
		sum.DurationP50, sum.DurationP95 = quantile(ds, 0.5), quantile(ds, 0.95)
	}
	sum.ScoreHistogram = histogram(t.graded.values())
	for name, vs := range t.metrics {
		if h := histogram(vs.values()); h != nil {
			if sum.MetricHistograms == nil {
				sum.MetricHistograms = make(map[string]Histogram, len(t.metrics))
			}
			sum.MetricHistograms[name] = *h
		}
	}

	// The open samples count as they stand, in copies.
	names := t.groupNames.values()
	names = names[:min(len(names), MaxSummaryGroups)]
	sum.MoreGroups = len(t.groups) - len(names)
	listed := make(map[string]*measures, len(names))
	for _, name := range names {
		listed[name] = t.groups[name].measures.clone()
	}
	overall, p := t.overall.clone(), t.passAt
	for _, key := range slices.Sorted(maps.Keys(t.open)) {
		sm := t.open[key]
		t.close(sm, overall, listed[sm.group], &p)
	}
	sum.Score, sum.Metrics = overall.stats()
	if t.epochs > 1 && p.at1N > 0 {
		v := p.at1 / float64(p.at1N)
		sum.PassAt1 = &v
	}
	if t.epochs > 1 && p.atKN > 0 {
		v := float64(p.atK) / float64(p.atKN)
		sum.PassAtK = &v
	}
	for _, name := range names {
		g := GroupSummary{Group: name, Outcomes: t.groups[name].Outcomes}
		g.PassRate = g.passRate()
		g.Score, g.Metrics = listed[name].stats()
		sum.Groups = append(sum.Groups, g)
	}
	return sum
}

// histogram bins vs, sorted and finite, in HistogramBins (one bin when
// they are all the same); nil when there are none. A bin is found by binary
// search, since a value's bin grows with it.
func histogram(vs []float64) *Histogram {
	if len(vs) == 0 {
		return nil
	}
	h := &Histogram{Min: vs[0], Max: vs[len(vs)-1], Counts: make([]int, HistogramBins)}
	if h.Min == h.Max {
		h.Counts = make([]int, 1)
	}
	from := 0
	for i := range h.Counts {
		to := len(vs)
		if i < len(h.Counts)-1 {
			to = from + sort.Search(len(vs)-from, func(j int) bool { return h.bin(vs[from+j]) > i })
		}
		h.Counts[i] = to - from
		from = to
	}
	return h
}

// bin is the bin of v, in [Min, Max]. The difference is halved, so that
// neither overflows (±MaxFloat64); a range that halves to nothing
// (subnormal) is one bin's.
func (h *Histogram) bin(v float64) int {
	n := len(h.Counts)
	if w := h.Max/2 - h.Min/2; n > 1 && w > 0 {
		return min(int((v/2-h.Min/2)/w*float64(n)), n-1)
	}
	return 0
}

// sorted holds values added in any order, sorted when read: those added
// since the last read are sorted and merged in, O(all) then.
type sorted[T cmp.Ordered] struct {
	vs    []T
	fresh []T
}

func (s *sorted[T]) add(v T) { s.fresh = append(s.fresh, v) }

// values is every value added, sorted; the slice is the holder's, to read.
func (s *sorted[T]) values() []T {
	if len(s.fresh) == 0 {
		return s.vs
	}
	slices.Sort(s.fresh)
	if len(s.vs) == 0 {
		s.vs, s.fresh = s.fresh, nil
		return s.vs
	}
	merged := make([]T, 0, len(s.vs)+len(s.fresh))
	i, j := 0, 0
	for i < len(s.vs) && j < len(s.fresh) {
		if s.fresh[j] < s.vs[i] {
			merged = append(merged, s.fresh[j])
			j++
		} else {
			merged = append(merged, s.vs[i])
			i++
		}
	}
	merged = append(append(merged, s.vs[i:]...), s.fresh[j:]...)
	s.vs, s.fresh = merged, s.fresh[:0]
	return s.vs
}

// compare lists the keys that passed in before and fail (or errored) in
// t, and the other way round, in the order t has them (keys in only one
// run are neither), and the pass rates of the groups both have.
func (t *tally) compare(against string, before *tally) *Comparison {
	c := &Comparison{Against: against, NewlyFailing: []string{}, NewlyPassing: []string{}}
	bad := func(status string) bool { return status == Failed || status == Errored }
	for _, key := range t.keys {
		switch prev, now := before.status[key], t.status[key]; {
		case prev == Passed && bad(now):
			c.NewlyFailing = append(c.NewlyFailing, key)
		case bad(prev) && now == Passed:
			c.NewlyPassing = append(c.NewlyPassing, key)
		}
	}
	for name, g := range t.groups {
		if b := before.groups[name]; b != nil && b.passRate() >= 0 && g.passRate() >= 0 {
			c.Groups = append(c.Groups, GroupDelta{Group: name, PassRate: delta(b.passRate(), g.passRate())})
		}
	}
	// The most changed, then by name.
	slices.SortFunc(c.Groups, func(a, b GroupDelta) int {
		return cmp.Or(cmp.Compare(math.Abs(b.PassRate.Delta), math.Abs(a.PassRate.Delta)), cmp.Compare(a.Group, b.Group))
	})
	if len(c.Groups) > MaxSummaryGroups {
		c.Groups, c.MoreGroups = c.Groups[:MaxSummaryGroups], len(c.Groups)-MaxSummaryGroups
	}
	slices.SortFunc(c.Groups, func(a, b GroupDelta) int { return cmp.Compare(a.Group, b.Group) })
	return c
}
