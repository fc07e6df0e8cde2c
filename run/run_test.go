package run_test

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

func setup(t *testing.T, keys ...string) (*run.Store, string) {
	t.Helper()
	client := evaltest.Client(t)
	s := run.NewStore(client, run.Options{})
	name := evaltest.Pool(t, client) // a unique name, cleaned up with the test
	if err := s.Create(t.Context(), run.Run{Name: name, Pool: "default", CreatedAt: time.Now(), Keys: keys}); err != nil {
		t.Fatal(err)
	}
	return s, name
}

func score(v float64) *float64 { return &v }

func TestFinishCountsOnce(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "a", "b", "c")
	if err := s.Create(t.Context(), run.Run{Name: name, Pool: "default", Keys: []string{"x"}}); !errors.Is(err, run.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	if err := s.Started(t.Context(), name, "a", "http://e1"); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Progress(t.Context(), name)
	if c.Running != 1 || c.Pending != 2 {
		t.Fatalf("progress %+v", c)
	}
	// A cancel and the attempt that was running, at once: one counts.
	var wg sync.WaitGroup
	var counted sync.Map
	for _, st := range []string{run.Cancelled, run.Passed, run.Failed} {
		wg.Go(func() {
			ok, err := s.Finish(t.Context(), name, run.Record{Key: "a", Status: st, Score: score(1)})
			if err != nil {
				t.Error(err)
			}
			counted.Store(st, ok)
		})
	}
	wg.Wait()
	n := 0
	counted.Range(func(_, v any) bool {
		if v.(bool) {
			n++
		}
		return true
	})
	if n != 1 {
		t.Fatalf("%d ends of one eval counted", n)
	}
	c, _ = s.Progress(t.Context(), name)
	if c.Done() != 1 || c.Running != 0 || c.Pending != 2 {
		t.Fatalf("progress %+v", c)
	}
	if _, err := s.Finish(t.Context(), name, run.Record{Key: "b", Status: "weird"}); !errors.Is(err, run.ErrInvalid) {
		t.Fatal(err)
	}
}

func TestSummary(t *testing.T) {
	t.Parallel()
	var keys []string
	for i := range 10 {
		keys = append(keys, fmt.Sprint("k", i))
	}
	s, name := setup(t, keys...)
	if _, means, err := s.ProgressMeans(t.Context(), name); err != nil || means.Score != nil || means.Metrics != nil {
		t.Fatalf("means before any end: %+v, %v", means, err)
	}
	for i, key := range keys[:8] {
		rec := run.Record{Key: key, Status: run.Passed, Score: score(float64(i)), Duration: float64(i + 1), Retries: i % 2}
		switch i {
		case 5:
			rec.Status, rec.Score = run.Failed, score(0)
		case 6:
			rec.Status, rec.Score, rec.Error = run.Errored, nil, "executor: unavailable"
		case 7:
			rec.Status, rec.Score = run.Cancelled, nil
		}
		if _, err := s.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.Started(t.Context(), name, "k8", "http://e1")
	sum, err := s.Summarize(t.Context(), name, "")
	if err != nil {
		t.Fatal(err)
	}
	want := run.Counts{Size: 10, Passed: 5, Failed: 1, Errored: 1, Cancelled: 1, Running: 1, Pending: 1}
	if sum.Counts != want {
		t.Fatalf("counts %+v, want %+v", sum.Counts, want)
	}
	if sum.PassRate != 5.0/7 || sum.Retries != 4 || len(sum.Failures) != 2 || sum.Failures[1].Error != "executor: unavailable" {
		t.Fatalf("summary %+v", sum)
	}
	// Scores 0,1,2,3,4 and 0: mean 10/6, median (nearest rank) 1.
	if *sum.MeanScore != 10.0/6 || *sum.MedianScore != 1 || sum.DurationP50 != 3 || sum.DurationP95 != 6 {
		t.Fatalf("mean %v median %v p50 %v p95 %v", *sum.MeanScore, *sum.MedianScore, sum.DurationP50, sum.DurationP95)
	}
	p, _ := s.Progress(t.Context(), name)
	if p != want {
		t.Fatalf("Progress %+v disagrees with Summarize %+v", p, want)
	}
	if p, means, err := s.ProgressMeans(t.Context(), name); err != nil || p != want || means.Score == nil || math.Abs(*means.Score-*sum.MeanScore) > 1e-12 {
		t.Fatalf("ProgressMeans %+v, %+v, %v; want %+v, mean score %v", p, means, err, want, *sum.MeanScore)
	}
}

// TestProgressMeans: the metrics' means Finish keeps sums of are the
// graded evals', as the summary's in a run without epochs, and a retry
// takes an end's values back out of them.
func TestProgressMeans(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "a", "b", "c", "d")
	for _, rec := range []run.Record{
		{Key: "a", Status: run.Passed, Metrics: map[string]float64{"f1": 1, "steps": 10}},
		{Key: "b", Status: run.Failed, Metrics: map[string]float64{"f1": 0.5}},
		{Key: "c", Status: run.Errored, Metrics: map[string]float64{"f1": 0, "steps": 99}},
		{Key: "d", Status: run.Failed, Metrics: map[string]float64{"f1": 0, "steps": 20}},
	} {
		if _, err := s.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
	check := func(step string, want map[string]float64) {
		t.Helper()
		_, means, err := s.ProgressMeans(t.Context(), name)
		if err != nil || len(means.Metrics) != len(want) {
			t.Fatalf("%s: means %+v, %v; want metrics %v", step, means, err, want)
		}
		sum, err := s.Summarize(t.Context(), name, "")
		if err != nil {
			t.Fatal(err)
		}
		for m, v := range want {
			if math.Abs(means.Metrics[m]-v) > 1e-12 || math.Abs(sum.Metrics[m].Mean-v) > 1e-12 {
				t.Errorf("%s: %s's mean %v, the summary's %v; want %v", step, m, means.Metrics[m], sum.Metrics[m].Mean, v)
			}
		}
	}
	check("ended", map[string]float64{"f1": 0.5, "steps": 15})
	r, err := s.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reopen(t.Context(), r, []string{"d"}, run.Failed); err != nil {
		t.Fatal(err)
	}
	check("d retried", map[string]float64{"f1": 0.75, "steps": 10})

	// Sums of values near the largest float64, all taken back, leave no
	// remainder behind for the next values.
	s, name = setup(t, "a", "b", "c", "d")
	for _, key := range []string{"a", "b", "c"} {
		if _, err := s.Finish(t.Context(), name, run.Record{Key: key, Status: run.Failed, Score: score(1e308), Metrics: map[string]float64{"f1": 1e308}}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err = s.Get(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reopen(t.Context(), r, r.Keys, run.Failed); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(t.Context(), name, run.Record{Key: "d", Status: run.Passed, Score: score(0.5), Metrics: map[string]float64{"f1": 2}}); err != nil {
		t.Fatal(err)
	}
	check("huge values retried", map[string]float64{"f1": 2})
	if _, means, err := s.ProgressMeans(t.Context(), name); err != nil || means.Score == nil || *means.Score != 0.5 {
		t.Fatalf("mean score after huge ones retried: %+v, %v; want 0.5", means, err)
	}
}

func TestCompare(t *testing.T) {
	t.Parallel()
	keys := []string{"a", "b", "c", "d"}
	s, before := setup(t, keys...)
	_, now := setup(t, keys...)
	was := map[string]string{"a": run.Passed, "b": run.Passed, "c": run.Failed, "d": run.Errored}
	is := map[string]string{"a": run.Passed, "b": run.Errored, "c": run.Passed, "d": run.Errored}
	for _, k := range keys {
		_, _ = s.Finish(t.Context(), before, run.Record{Key: k, Status: was[k]})
		_, _ = s.Finish(t.Context(), now, run.Record{Key: k, Status: is[k]})
	}
	sum, err := s.Summarize(t.Context(), now, before)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sum.Compare.NewlyFailing, []string{"b"}) || !slices.Equal(sum.Compare.NewlyPassing, []string{"c"}) {
		t.Fatalf("compare %+v", sum.Compare)
	}
	if _, err := s.Summarize(t.Context(), now, "no-such-run"); !errors.Is(err, run.ErrNotFound) {
		t.Fatal(err)
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	for name, ok := range map[string]bool{"nightly-2026.11.25": true, "a": true, "": false, "a/b": false, "-x": false, "x y": false} {
		if err := run.ValidateName(name); (err == nil) != ok {
			t.Errorf("run.ValidateName(%q) = %v", name, err)
		}
	}
}

// TestResults: every eval of a run in its order, ended ones as recorded,
// the others running on their executor or pending.
func TestResults(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "c", "a", "b")
	if err := s.Started(t.Context(), name, "a", "http://e1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(t.Context(), name, run.Record{Key: "b", Status: run.Passed, Score: score(1), Executor: "http://e2"}); err != nil {
		t.Fatal(err)
	}
	_, rows, err := s.Results(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		key, status, executor string
		ended                 bool
	}{
		{"c", run.Pending, "", false},
		{"a", run.Running, "http://e1", false},
		{"b", run.Passed, "http://e2", true},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(rows), len(want), rows)
	}
	for i, w := range want {
		if r := rows[i]; r.Key != w.key || r.Status != w.status || r.Executor != w.executor || r.Ended() != w.ended {
			t.Errorf("row %d: %+v (ended %v), want %+v", i, r, r.Ended(), w)
		}
	}
}

// A run's share reads the executors it held over the last minute from the
// attempts that ended in it: an attempt's time counts where it was spent,
// so one longer than the window counts as one executor, and a cancel,
// which held none, counts nothing.
func TestHeldLastMinute(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		took     []float64 // seconds each attempt held its executor
		min, max float64
	}{
		{"none", nil, 0, 0},
		{"three of 6 s", []float64{6, 6, 6}, 18.0 / 70, 18.0 / 60},
		{"one of 5 min", []float64{300}, 1, 1},
		{"two of 5 min", []float64{300, 300}, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			keys := []string{"cancelled"}
			for i := range tt.took {
				keys = append(keys, fmt.Sprint(i))
			}
			s, name := setup(t, keys...)
			for i, took := range tt.took {
				if _, err := s.Finish(t.Context(), name, run.Record{Key: fmt.Sprint(i), Status: run.Passed, Duration: took}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.Finish(t.Context(), name, run.Record{Key: "cancelled", Status: run.Cancelled}); err != nil {
				t.Fatal(err)
			}
			sh, err := s.Share(t.Context(), name)
			if err != nil || sh.HeldLastMinute < tt.min-0.01 || sh.HeldLastMinute > tt.max+0.01 {
				t.Errorf("held over the last minute: %v, %v; want %.2f to %.2f", sh.HeldLastMinute, err, tt.min, tt.max)
			}
		})
	}
}

// TestRunMetricsBounded: a run sums up, and sums for the runs list, the
// metrics of its first MaxRunMetrics names, whatever names its graders
// make up, and counts the values left out.
func TestRunMetricsBounded(t *testing.T) {
	t.Parallel()
	const evals, perEval = 10, 32
	var ks []string
	for i := range evals {
		ks = append(ks, fmt.Sprint("k", i))
	}
	s, name := setup(t, ks...)
	for i, key := range ks {
		m := map[string]float64{}
		for j := range perEval {
			m[fmt.Sprintf("m%02d-%02d", i, j)] = float64(j)
		}
		if _, err := s.Finish(t.Context(), name, run.Record{Key: key, Status: run.Passed, Metrics: m}); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := s.Summarize(t.Context(), name, "")
	if err != nil {
		t.Fatal(err)
	}
	_, means, err := s.ProgressMeans(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	// The first two evals' names, in the order they ended.
	if len(sum.Metrics) != run.MaxRunMetrics || len(sum.MetricHistograms) != run.MaxRunMetrics || sum.MetricsLeftOut != evals*perEval-run.MaxRunMetrics ||
		len(means.Metrics) != run.MaxRunMetrics || means.Metrics["m01-31"] != 31 {
		t.Errorf("%d metrics (%d histograms), %d values left out; the list %d metrics (m01-31 %v); want %d, %d left out",
			len(sum.Metrics), len(sum.MetricHistograms), sum.MetricsLeftOut, len(means.Metrics), means.Metrics["m01-31"], run.MaxRunMetrics, evals*perEval-run.MaxRunMetrics)
	}
}
