package run

import (
	"context"
	"fmt"
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
	Counts
	// PassRate is passed over passed, failed and errored; -1 before any
	// ended. Cancelled evals do not count.
	PassRate    float64  `json:"pass_rate"`
	MeanScore   *float64 `json:"mean_score,omitempty"`
	MedianScore *float64 `json:"median_score,omitempty"`
	// DurationP50 and DurationP95 are of the graded evals' last attempts,
	// in seconds.
	DurationP50 float64 `json:"duration_p50_seconds"`
	DurationP95 float64 `json:"duration_p95_seconds"`
	Retries     int     `json:"retries"`
	// Failures are the first MaxSummaryFailures failed and errored evals,
	// in the run's order, with their errors; MoreFailures counts the rest
	// (Results has them all).
	Failures     []Record `json:"failures"`
	MoreFailures int      `json:"more_failures,omitempty"`
	// Compare is what changed against another run, when asked.
	Compare *Comparison `json:"compare,omitempty"`
}

// MaxSummaryFailures bounds a Summary's Failures, so that a summary stays
// small whatever the run (100,000 failures with their errors and outputs
// made one of 16 MB).
const MaxSummaryFailures = 100

// Comparison lists the evals (by key) whose outcome changed between two
// runs.
type Comparison struct {
	Against      string   `json:"against"`
	NewlyFailing []string `json:"newly_failing"`
	NewlyPassing []string `json:"newly_passing"`
}

// Summarize reads a run and sums it up; with against set, it compares it
// with that run, eval key by eval key.
func (s *Store) Summarize(ctx context.Context, name, against string) (Summary, error) {
	r, recs, running, err := s.Records(ctx, name)
	if err != nil {
		return Summary{}, err
	}
	sum := Summary{Name: r.Name, Pool: r.Pool, CreatedAt: r.CreatedAt, PassRate: -1, Failures: []Record{}}
	sum.Size, sum.Submission, sum.Enqueued, sum.Meta, sum.Epochs = r.Size, r.Submission, r.Enqueued, r.Meta, r.Epochs
	var scores, durations []float64
	ended := make(map[string]bool, len(recs))
	for _, rec := range recs {
		ended[rec.Key] = true
		sum.Retries += rec.Retries
		switch rec.Status {
		case Passed:
			sum.Passed++
		case Failed:
			sum.Failed++
		case Errored:
			sum.Errored++
		case Cancelled:
			sum.Cancelled++
		}
		switch {
		case rec.Status != Failed && rec.Status != Errored:
		case len(sum.Failures) < MaxSummaryFailures:
			sum.Failures = append(sum.Failures, rec)
		default:
			sum.MoreFailures++
		}
		if rec.Score != nil {
			scores = append(scores, *rec.Score)
		}
		if rec.Status == Passed || rec.Status == Failed {
			durations = append(durations, rec.Duration)
		}
	}
	for key := range running {
		if !ended[key] {
			sum.Running++
		}
	}
	sum.Pending = max(0, sum.Size-sum.Done()-sum.Running)
	if graded := sum.Passed + sum.Failed + sum.Errored; graded > 0 {
		sum.PassRate = float64(sum.Passed) / float64(graded)
	}
	if len(scores) > 0 {
		mean, median := 0.0, quantile(scores, 0.5)
		for _, v := range scores {
			mean += v
		}
		mean /= float64(len(scores))
		sum.MeanScore, sum.MedianScore = &mean, &median
	}
	if len(durations) > 0 {
		sum.DurationP50, sum.DurationP95 = quantile(durations, 0.5), quantile(durations, 0.95)
	}
	if against != "" {
		_, other, _, err := s.Records(ctx, against)
		if err != nil {
			return Summary{}, fmt.Errorf("compare with %s: %w", against, err)
		}
		sum.Compare = compare(against, recs, other)
	}
	return sum, nil
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

// quantile is the q-quantile of vs by the nearest rank; vs is sorted in
// place.
func quantile(vs []float64, q float64) float64 {
	slices.Sort(vs)
	i := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(0, min(i, len(vs)-1))]
}
