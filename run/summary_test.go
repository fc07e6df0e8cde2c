package run_test

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
)

// create records a run of epochs with keys (KEY#1 … for epochs over 1)
// and the ends recs; it returns its store and name.
func create(t *testing.T, epochs int, keys []string, recs ...run.Record) (*run.Store, string) {
	t.Helper()
	client := evaltest.Client(t)
	s := run.NewStore(client, run.Options{})
	name := evaltest.Pool(t, client)
	if epochs > 1 {
		var ks []string
		for _, k := range keys {
			for e := range epochs {
				ks = append(ks, run.EpochKey(k, e+1))
			}
		}
		keys = ks
	}
	if err := s.Create(t.Context(), run.Run{Name: name, Pool: "default", CreatedAt: time.Now(), Keys: keys, Epochs: epochs}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if rec.Epoch > 0 {
			rec.Key = run.EpochKey(rec.Key, rec.Epoch)
		}
		if _, err := s.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
	return s, name
}

// near says whether got and want are the same JSON, floats within 1e-12.
func near(got, want any) bool {
	var g, w any
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if json.Unmarshal(gb, &g) != nil || json.Unmarshal(wb, &w) != nil {
		return false
	}
	return nearJSON(g, w)
}

func nearJSON(g, w any) bool {
	switch w := w.(type) {
	case float64:
		g, ok := g.(float64)
		return ok && math.Abs(g-w) < 1e-12
	case map[string]any:
		g, ok := g.(map[string]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for k, v := range w {
			if !nearJSON(g[k], v) {
				return false
			}
		}
		return true
	case []any:
		g, ok := g.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !nearJSON(g[i], w[i]) {
				return false
			}
		}
		return true
	default:
		return g == w
	}
}

func ptr[T any](v T) *T { return &v }

// TestSummaryStats: the score's and each metric's mean and standard error
// over the graded evals that answered them, by sample in a run of epochs;
// pass@1 and pass@k; groups with their counts, pass rates and measures.
// Expected values are worked by hand in the comments.
func TestSummaryStats(t *testing.T) {
	t.Parallel()
	type stats struct {
		Score   *run.Stat           `json:"score"`
		Metrics map[string]run.Stat `json:"metrics"`
		PassAt1 *float64            `json:"pass_at_1"`
		PassAtK *float64            `json:"pass_at_k"`
		Groups  []run.GroupSummary  `json:"groups"`
	}
	P, F, E, C := run.Passed, run.Failed, run.Errored, run.Cancelled
	tests := []struct {
		name   string
		epochs int
		keys   []string
		recs   []run.Record
		want   stats
	}{{
		name: "metrics missing on some evals",
		keys: []string{"a", "b", "c", "d", "e", "f"},
		recs: []run.Record{
			{Key: "a", Status: P, Score: score(0), Metrics: map[string]float64{"accuracy": 1, "f1": 0.7}},
			{Key: "b", Status: F, Score: score(1), Metrics: map[string]float64{"accuracy": 0}},
			{Key: "c", Status: P, Score: score(1), Metrics: map[string]float64{"accuracy": 1}},
			{Key: "d", Status: F, Score: score(0)},
			// Neither an errored nor a cancelled eval counts.
			{Key: "e", Status: E, Metrics: map[string]float64{"accuracy": 9}},
			{Key: "f", Status: C, Score: score(9), Metrics: map[string]float64{"accuracy": 9}},
		},
		want: stats{
			// 0,1,1,0: mean 1/2, deviations ±1/2: var 1/3, stderr √(1/3/4).
			Score: &run.Stat{Mean: 0.5, Stderr: math.Sqrt(1.0 / 12), N: 4},
			Metrics: map[string]run.Stat{
				// 1,0,1: mean 2/3, deviations 1/3,-2/3,1/3: var (6/9)/2 = 1/3, stderr √(1/9).
				"accuracy": {Mean: 2.0 / 3, Stderr: 1.0 / 3, N: 3},
				"f1":       {Mean: 0.7, Stderr: 0, N: 1},
			},
		},
	}, {
		name:   "epochs",
		epochs: 3,
		keys:   []string{"a", "b", "c", "d", "e"},
		recs: []run.Record{
			// a: 2 of 3 passed; score 2/3.
			{Key: "a", Epoch: 1, Status: P, Score: score(1)},
			{Key: "a", Epoch: 2, Status: F, Score: score(0)},
			{Key: "a", Epoch: 3, Status: P, Score: score(1)},
			// b: 0 of 2 (one cancelled: out of pass@k); score 0.
			{Key: "b", Epoch: 1, Status: F, Score: score(0)},
			{Key: "b", Epoch: 2, Status: F, Score: score(0)},
			{Key: "b", Epoch: 3, Status: C},
			// c: 1 of 3 (an errored epoch counts, without a score); score 3/4.
			{Key: "c", Epoch: 1, Status: P, Score: score(1)},
			{Key: "c", Epoch: 2, Status: E},
			{Key: "c", Epoch: 3, Status: F, Score: score(0.5)},
			// d: 0 of 1, two epochs pending (out of pass@k); score 0.
			{Key: "d", Epoch: 1, Status: F, Score: score(0)},
			// e: 0 of 3; score 0.
			{Key: "e", Epoch: 1, Status: F, Score: score(0)},
			{Key: "e", Epoch: 2, Status: F, Score: score(0)},
			{Key: "e", Epoch: 3, Status: F, Score: score(0)},
		},
		want: stats{
			// Samples 2/3,0,3/4,0,0: mean 17/60; deviations 23,-17,28,-17,-17 (/60):
			// squares 2180/3600, var 545/3600, stderr √(109/3600).
			Score: &run.Stat{Mean: 17.0 / 60, Stderr: math.Sqrt(109) / 60, N: 5},
			// (2/3 + 0 + 1/3 + 0 + 0) / 5.
			PassAt1: ptr(0.2),
			// a, c and e ended every epoch, none cancelled: a and c passed one.
			PassAtK: ptr(2.0 / 3),
		},
	}, {
		name: "groups",
		keys: []string{"m1", "m2", "m3", "c1", "c2", "x", "z"},
		recs: []run.Record{
			{Key: "m1", Group: "math", Status: P, Score: score(1), Metrics: map[string]float64{"accuracy": 1}},
			{Key: "m2", Group: "math", Status: F, Score: score(0), Metrics: map[string]float64{"accuracy": 0}},
			{Key: "m3", Group: "math", Status: E},
			{Key: "c1", Group: "code", Status: P, Score: score(0.5)},
			{Key: "c2", Group: "code", Status: C},
			{Key: "x", Status: P, Score: score(1)},
			{Key: "z", Group: "zz top", Status: C},
		},
		want: stats{
			// 1,0,0.5,1: mean 5/8; deviations 3,-5,-1,3 (/8): squares 44/64, var 44/192, stderr √(44/768).
			Score:   &run.Stat{Mean: 0.625, Stderr: math.Sqrt(44.0 / 768), N: 4},
			Metrics: map[string]run.Stat{"accuracy": {Mean: 0.5, Stderr: 0.5, N: 2}},
			Groups: []run.GroupSummary{
				{Group: "code", Outcomes: run.Outcomes{Passed: 1, Cancelled: 1}, PassRate: 1, Score: &run.Stat{Mean: 0.5, N: 1}},
				// 1,0: mean 1/2, var 1/2, stderr √(1/4).
				{Group: "math", Outcomes: run.Outcomes{Passed: 1, Failed: 1, Errored: 1}, PassRate: 1.0 / 3, Score: &run.Stat{Mean: 0.5, Stderr: 0.5, N: 2},
					Metrics: map[string]run.Stat{"accuracy": {Mean: 0.5, Stderr: 0.5, N: 2}}},
				{Group: "zz top", Outcomes: run.Outcomes{Cancelled: 1}, PassRate: -1},
			},
		},
	}, {
		name: "nothing ended",
		keys: []string{"a"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, name := create(t, tt.epochs, tt.keys, tt.recs...)
			sum, err := s.Summarize(t.Context(), name, "")
			if err != nil {
				t.Fatal(err)
			}
			got := stats{sum.Score, sum.Metrics, sum.PassAt1, sum.PassAtK, sum.Groups}
			if !near(got, tt.want) {
				t.Errorf("got  %s\nwant %s", mustJSON(t, got), mustJSON(t, tt.want))
			}
		})
	}
}

// TestSummaryJSON: the names other clients read the summary by.
func TestSummaryJSON(t *testing.T) {
	t.Parallel()
	s, name := create(t, 2, []string{"a"},
		run.Record{Key: "a", Epoch: 1, Group: "g", Status: run.Passed, Score: score(1), Metrics: map[string]float64{"acc": 1}},
		run.Record{Key: "a", Epoch: 2, Group: "g", Status: run.Failed, Score: score(0), Metrics: map[string]float64{"acc": 0}, Error: "wrong\nanswer"})
	sum, err := s.Summarize(t.Context(), name, "")
	if err != nil {
		t.Fatal(err)
	}
	got := mustJSON(t, sum)
	for _, want := range []string{
		`"score":{"mean":0.5,"stderr":0,"n":1}`,
		`"metrics":{"acc":{"mean":0.5,"stderr":0,"n":1}}`,
		`"pass_at_1":0.5,"pass_at_k":1`,
		`"groups":[{"group":"g","passed":1,"failed":1,"errored":0,"cancelled":0,"pass_rate":0.5,"score":{"mean":0.5,"stderr":0,"n":1},"metrics":{"acc":{"mean":0.5,"stderr":0,"n":1}}}]`,
		// A failure keeps its record's fields, and says why.
		`"key":"a#2","status":"failed","score":0,"metrics":{"acc":0},"group":"g","epoch":2,`,
		`"reason":"wrong answer"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary %s\nlacks %s", got, want)
		}
	}
}

// TestCompareDeltas: against another run, the deltas of the pass rate, of
// the metrics both runs have and of the groups both have.
func TestCompareDeltas(t *testing.T) {
	t.Parallel()
	P, F := run.Passed, run.Failed
	acc := func(v float64) map[string]float64 { return map[string]float64{"accuracy": v} }
	s, before := create(t, 1, []string{"a", "b", "c", "old"},
		run.Record{Key: "a", Group: "math", Status: P, Metrics: acc(1)},
		run.Record{Key: "b", Group: "math", Status: F, Metrics: acc(0.6)},
		run.Record{Key: "c", Group: "code", Status: P, Metrics: map[string]float64{"f1": 0.5}},
		run.Record{Key: "old", Group: "gone", Status: P})
	_, now := create(t, 1, []string{"a", "b", "c", "e", "new"},
		run.Record{Key: "a", Group: "math", Status: F, Metrics: acc(0.5)},
		run.Record{Key: "b", Group: "math", Status: P, Metrics: acc(1)},
		run.Record{Key: "c", Group: "code", Status: P},
		run.Record{Key: "e", Group: "math", Status: P},
		run.Record{Key: "new", Group: "new", Status: F})
	sum, err := s.Summarize(t.Context(), now, before)
	if err != nil {
		t.Fatal(err)
	}
	want := &run.Comparison{
		Against:      before,
		NewlyFailing: []string{"a"},
		NewlyPassing: []string{"b"},
		// 3 of 4 passed before, 3 of 5 now.
		PassRate: &run.Delta{Before: 0.75, After: 0.6, Delta: -0.15},
		// accuracy 0.8 before, 0.75 now; f1 is only before's.
		Metrics: map[string]run.Delta{"accuracy": {Before: 0.8, After: 0.75, Delta: -0.05}},
		// math 1/2 before, 2/3 now; gone and new are in one run each.
		Groups: []run.GroupDelta{
			{Group: "code", PassRate: run.Delta{Before: 1, After: 1}},
			{Group: "math", PassRate: run.Delta{Before: 0.5, After: 2.0 / 3, Delta: 1.0 / 6}},
		},
	}
	if !near(sum.Compare, want) {
		t.Errorf("compare %s\nwant    %s", mustJSON(t, sum.Compare), mustJSON(t, want))
	}
	// A run with nothing graded has no pass rate to compare.
	_, empty := create(t, 1, []string{"a"})
	if sum, err := s.Summarize(t.Context(), empty, before); err != nil || sum.Compare.PassRate != nil || sum.Compare.Metrics != nil || sum.Compare.Groups != nil {
		t.Fatalf("compare of a run with no ends: %s, %v", mustJSON(t, sum.Compare), err)
	}
}

// TestCompareWeighsEveryGroup: a comparison weighs every group both runs
// have, not only the first MaxSummaryGroups by name: of 300, the one that
// regressed, last by name, is listed, and the rest counted.
func TestCompareWeighsEveryGroup(t *testing.T) {
	t.Parallel()
	const groups = 300
	ends := func(failing string) ([]string, []run.Record) {
		var ks []string
		var recs []run.Record
		for i := range groups {
			g := fmt.Sprintf("g%03d", i)
			rec := run.Record{Key: g, Group: g, Status: run.Passed}
			if g == failing {
				rec.Status = run.Failed
			}
			ks, recs = append(ks, g), append(recs, rec)
		}
		return ks, recs
	}
	ks, recs := ends("")
	s, before := create(t, 1, ks, recs...)
	ks, recs = ends("g299")
	_, now := create(t, 1, ks, recs...)
	sum, err := s.Summarize(t.Context(), now, before)
	if err != nil {
		t.Fatal(err)
	}
	c := sum.Compare
	i := slices.IndexFunc(c.Groups, func(g run.GroupDelta) bool { return g.Group == "g299" })
	if len(c.Groups) != run.MaxSummaryGroups || c.MoreGroups != groups-run.MaxSummaryGroups || i < 0 || c.Groups[i].PassRate.Delta != -1 {
		t.Fatalf("%d groups compared, %d more, g299 at %d; want %d, %d more, g299 listed with a delta of -1", len(c.Groups), c.MoreGroups, i, run.MaxSummaryGroups, groups-run.MaxSummaryGroups)
	}
}

// TestSummaryLargeRun: a run of 10,000 ended evals (2,000 samples of 5
// epochs) with 3 metrics and 20 groups sums up in a few times the reading
// of its records: no work grows faster than the run. Not parallel, to time
// it alone.
func TestSummaryLargeRun(t *testing.T) {
	const samples, epochs, groups = 2000, 5, 20
	var keys []string
	for i := range samples {
		keys = append(keys, fmt.Sprint("k", i))
	}
	s, name := create(t, epochs, keys)
	for g := range groups {
		for e := 1; e <= epochs; e++ {
			var ks []string
			for i := g; i < samples; i += groups {
				ks = append(ks, run.EpochKey(keys[i], e))
			}
			rec := run.Record{Status: run.Passed, Score: score(float64(e) / epochs), Group: fmt.Sprint("group", g), Epoch: e,
				Metrics: map[string]float64{"accuracy": float64(e % 2), "f1": 0.5, "bleu": float64(g)}}
			if e == 2 {
				rec.Status = run.Failed
			}
			if _, err := s.FinishMany(t.Context(), name, ks, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Timed against a read of the same records, so that a loaded machine
	// slows both: the sums cost a few times the read at most, where work
	// that grew faster than the run would cost seconds more.
	start := time.Now()
	if _, _, _, err := s.Records(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	read := time.Since(start)
	start = time.Now()
	sum, err := s.Summarize(t.Context(), name, "")
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary of %d evals: %s; reading their records: %s", sum.Done(), took, read)
	if took > 4*read+time.Second {
		t.Errorf("summary took %s, reading its records %s", took, read)
	}
	if sum.Done() != samples*epochs || len(sum.Groups) != groups || sum.Score.N != samples || len(sum.Metrics) != 3 || math.Abs(*sum.PassAt1-0.8) > 1e-9 || *sum.PassAtK != 1 ||
		!slices.ContainsFunc(sum.Groups, func(g run.GroupSummary) bool { return g.Group == "group19" && g.Metrics["bleu"].Mean == 19 }) {
		t.Fatalf("summary: %d done, %d groups, score %+v, %d metrics, pass@1 %v, pass@k %v", sum.Done(), len(sum.Groups), sum.Score, len(sum.Metrics), *sum.PassAt1, *sum.PassAtK)
	}
}

// A grader's values are any finite float64: a diverging model's perplexity
// is 1e200. Means, standard errors and deltas of values as far apart as
// ±1e308 stay finite, and the summary encodes as JSON (an infinity would
// fail it).
func TestSummaryOfHugeValues(t *testing.T) {
	t.Parallel()
	rec := func(key string, score, ppl, big float64) run.Record {
		return run.Record{Key: key, Status: run.Passed, Score: &score, Metrics: map[string]float64{"ppl": ppl, "big": big}}
	}
	const most = math.MaxFloat64
	s, now := create(t, 1, []string{"a", "b", "c"}, rec("a", most, 1e200, most), rec("b", -most, 3.5, most), rec("c", 0, 1e200, most))
	_, before := create(t, 1, []string{"a", "b"}, rec("a", 1, 1, -most), rec("b", 1, 1, -most))
	sum, err := s.Summarize(t.Context(), now, before)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(sum); err != nil {
		t.Fatalf("the summary does not encode: %v", err)
	}
	ppl := sum.Metrics["ppl"]
	if math.Abs(ppl.Mean-2e200/3) > 1e186 || ppl.Stderr <= 0 || math.IsInf(ppl.Stderr, 0) || sum.Score.Mean != 0 || math.IsInf(sum.Score.Stderr, 0) || *sum.MeanScore != 0 {
		t.Errorf("score %+v (mean_score %v), ppl %+v; want finite means and standard errors", sum.Score, *sum.MeanScore, ppl)
	}
	if d := sum.Compare.Metrics["big"]; d.Before != -most || d.After != most || d.Delta != most {
		t.Errorf("big's delta %+v; want from the least float64 to the largest, the difference saturated", d)
	}
}
