package run

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"testing"
)

// TestSummaryHistograms: the graded evals' scores and each metric binned
// in HistogramBins equal bins from the least value to the largest (one
// bin when they are all the same), each epoch on its own; errored and
// cancelled evals, missing values and values that are not finite left
// out.
func TestSummaryHistograms(t *testing.T) {
	t.Parallel()
	v := func(f float64) *float64 { return &f }
	bins := func(counts map[int]int) []int {
		c := make([]int, HistogramBins)
		for i, n := range counts {
			c[i] = n
		}
		return c
	}
	P, F, E, C := Passed, Failed, Errored, Cancelled
	tests := []struct {
		name    string
		recs    []Record
		score   *Histogram
		metrics map[string]Histogram
	}{{
		name: "nothing graded",
		recs: []Record{{Key: "a", Status: E, Score: v(1), Metrics: map[string]float64{"acc": 1}}, {Key: "b", Status: C}},
	}, {
		name:    "one eval",
		recs:    []Record{{Key: "a", Status: P, Score: v(0.7), Metrics: map[string]float64{"acc": 1}}},
		score:   &Histogram{Min: 0.7, Max: 0.7, Counts: []int{1}},
		metrics: map[string]Histogram{"acc": {Min: 1, Max: 1, Counts: []int{1}}},
	}, {
		name:  "all equal",
		recs:  []Record{{Key: "a", Status: P, Score: v(1)}, {Key: "b", Status: F, Score: v(1)}, {Key: "c", Status: P, Score: v(1)}},
		score: &Histogram{Min: 1, Max: 1, Counts: []int{3}},
	}, {
		// 0 to 1 in 20 bins of 0.05: 0.5 starts bin 10, 0.99 is in 19 and
		// 1, the largest, in the last bin too.
		name: "bins",
		recs: []Record{
			{Key: "a", Status: P, Score: v(0), Metrics: map[string]float64{"acc": 0.5}},
			{Key: "b", Status: F, Score: v(0.5), Metrics: map[string]float64{"acc": 0.5}},
			{Key: "c", Status: P, Score: v(0.99)},
			{Key: "d", Status: P, Score: v(1), Metrics: map[string]float64{"acc": 0.5}},
			{Key: "e", Status: F, Score: v(0.04)},
			// Neither errored nor cancelled evals count, scores or metrics.
			{Key: "f", Status: E, Score: v(-5), Metrics: map[string]float64{"acc": 9}},
			{Key: "g", Status: C, Score: v(7), Metrics: map[string]float64{"acc": 9, "f1": 1}},
		},
		score:   &Histogram{Min: 0, Max: 1, Counts: bins(map[int]int{0: 2, 10: 1, 19: 2})},
		metrics: map[string]Histogram{"acc": {Min: 0.5, Max: 0.5, Counts: []int{3}}},
	}, {
		name: "not finite, or missing",
		recs: []Record{
			{Key: "a", Status: P, Score: v(math.NaN()), Metrics: map[string]float64{"acc": math.NaN(), "f1": 2}},
			{Key: "b", Status: P, Score: v(math.Inf(1)), Metrics: map[string]float64{"acc": math.Inf(-1), "f1": 4}},
			{Key: "c", Status: F, Metrics: map[string]float64{"f1": 3}},
			{Key: "d", Status: F, Score: v(-2)},
		},
		score:   &Histogram{Min: -2, Max: -2, Counts: []int{1}},
		metrics: map[string]Histogram{"f1": {Min: 2, Max: 4, Counts: bins(map[int]int{0: 1, 10: 1, 19: 1})}},
	}, {
		// The range is wider than a float64 holds: the bins are still right.
		name: "huge",
		recs: []Record{
			{Key: "a", Status: P, Score: v(-math.MaxFloat64)},
			{Key: "b", Status: P, Score: v(0)},
			{Key: "c", Status: P, Score: v(math.MaxFloat64)},
		},
		score: &Histogram{Min: -math.MaxFloat64, Max: math.MaxFloat64, Counts: bins(map[int]int{0: 1, 10: 1, 19: 1})},
	}, {
		name: "epochs count one by one",
		recs: []Record{
			{Key: "a#1", Epoch: 1, Status: P, Score: v(1)},
			{Key: "a#2", Epoch: 2, Status: F, Score: v(0)},
			{Key: "b#1", Epoch: 1, Status: P, Score: v(1)},
		},
		score: &Histogram{Min: 0, Max: 1, Counts: bins(map[int]int{0: 1, 19: 2})},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sum := summarize(Run{Name: "r", Epochs: 2}, tt.recs)
			if !reflect.DeepEqual(sum.ScoreHistogram, tt.score) {
				t.Errorf("score histogram %+v, want %+v", sum.ScoreHistogram, tt.score)
			}
			if !reflect.DeepEqual(sum.MetricHistograms, tt.metrics) {
				t.Errorf("metric histograms %+v, want %+v", sum.MetricHistograms, tt.metrics)
			}
		})
	}
}

// TestSummaryGroupsBounded: a run's groups, by name, are listed up to
// MaxSummaryGroups with a count of the rest; each with its counts, pass
// rate and mean score; and a run whose evals have no group lists none.
func TestSummaryGroupsBounded(t *testing.T) {
	t.Parallel()
	v := func(f float64) *float64 { return &f }
	// groups makes n groups g000 … of one passed eval each, of score 1.
	groups := func(n int) []Record {
		var recs []Record
		for i := range n {
			recs = append(recs, Record{Key: fmt.Sprint("k", i), Group: fmt.Sprintf("g%03d", i), Status: Passed, Score: v(1)})
		}
		return recs
	}
	tests := []struct {
		name  string
		recs  []Record
		names []string // the groups listed, "…" for the first, next and last only
		more  int
		check func(t *testing.T, gs []GroupSummary)
	}{{
		name: "no group",
		recs: []Record{{Key: "a", Status: Passed}},
	}, {
		name:  "one eval",
		recs:  []Record{{Key: "a", Group: "only", Status: Failed, Score: v(0.25)}},
		names: []string{"only"},
		check: func(t *testing.T, gs []GroupSummary) {
			if g := gs[0]; g.Outcomes != (Outcomes{Failed: 1}) || g.PassRate != 0 || g.Score == nil || g.Score.Mean != 0.25 {
				t.Errorf("group %+v", g)
			}
		},
	}, {
		name: "sorted by name, with their figures",
		recs: []Record{
			{Key: "a", Group: "b", Status: Passed, Score: v(1)},
			{Key: "b", Group: "a", Status: Errored},
			{Key: "c", Group: "b", Status: Failed, Score: v(0)},
			{Key: "d", Group: "b", Status: Cancelled},
			{Key: "e", Status: Passed},
		},
		names: []string{"a", "b"},
		check: func(t *testing.T, gs []GroupSummary) {
			if a := gs[0]; a.Outcomes != (Outcomes{Errored: 1}) || a.PassRate != 0 || a.Score != nil {
				t.Errorf("group a %+v", a)
			}
			if b := gs[1]; b.Outcomes != (Outcomes{Passed: 1, Failed: 1, Cancelled: 1}) || b.PassRate != 0.5 || b.Score == nil || b.Score.Mean != 0.5 {
				t.Errorf("group b %+v", b)
			}
		},
	}, {
		name:  "as many as listed",
		recs:  groups(MaxSummaryGroups),
		names: []string{"g000", "g001", "g199"},
	}, {
		name:  "more than listed",
		recs:  groups(MaxSummaryGroups + 51),
		names: []string{"g000", "g001", "g199"},
		more:  51,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sum := summarize(Run{Name: "r"}, tt.recs)
			var names []string
			for _, g := range sum.Groups {
				names = append(names, g.Group)
			}
			if len(names) > 3 {
				if len(names) != MaxSummaryGroups {
					t.Errorf("%d groups listed, want %d", len(names), MaxSummaryGroups)
				}
				names = []string{names[0], names[1], names[len(names)-1]}
			}
			if !slices.Equal(names, tt.names) || sum.MoreGroups != tt.more {
				t.Fatalf("groups %v and %d more, want %v and %d more", names, sum.MoreGroups, tt.names, tt.more)
			}
			if tt.check != nil {
				tt.check(t, sum.Groups)
			}
		})
	}
}

// TestSuite: a run's suite is its meta's, else its name less a date and
// time it ends with.
func TestSuite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		meta map[string]string
		want string
	}{
		{"nightly", nil, "nightly"},
		{"nightly-20250102", nil, "nightly"},
		{"nightly-20250102-030405", nil, "nightly"},
		{"run-20250102-030405-a1b2c3", nil, "run"},
		{"nightly-2025-01-02", nil, "nightly"},
		{"nightly-2025-01-02T03:04:05Z", nil, "nightly"},
		{"nightly-2025-01-02_03.04", nil, "nightly"},
		{"gsm8k-v2-2025-01-02", nil, "gsm8k-v2"},
		// Only at the end, and only a whole date.
		{"20250102-nightly", nil, "20250102-nightly"},
		{"nightly-2025", nil, "nightly-2025"},
		{"nightly-1234567", nil, "nightly-1234567"},
		{"nightly-20250102-extra", nil, "nightly-20250102-extra"},
		{"20250102", nil, "20250102"},
		{"run-20250102-030405", map[string]string{"suite": "gsm8k"}, "gsm8k"},
		{"x", map[string]string{"suite": ""}, "x"},
	}
	for _, tt := range tests {
		if got := (Run{Name: tt.name, Meta: tt.meta}).Suite(); got != tt.want {
			t.Errorf("suite of %s (meta %v) = %q, want %q", tt.name, tt.meta, got, tt.want)
		}
	}
}

// summarize tallies recs in their order, as a Summary of r.
func summarize(r Run, recs []Record) Summary {
	t := newTally(r.Epochs)
	for _, rec := range recs {
		t.add(rec)
	}
	return t.summary(r)
}
