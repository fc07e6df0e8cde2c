package api

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
)

// finished records a run of the ends recs (keys k0 …) straight in the
// store, created at the given time.
func finished(t *testing.T, b *bundle, name string, at time.Time, meta map[string]string, recs ...run.Record) {
	t.Helper()
	s := run.NewStore(b.client, run.Options{})
	var ks []string
	for i := range recs {
		ks = append(ks, fmt.Sprint("k", i))
	}
	if err := s.Create(t.Context(), run.Run{Name: name, Pool: b.pool.Name(), CreatedAt: at, Keys: ks, Meta: meta}); err != nil {
		t.Fatal(err)
	}
	for i, rec := range recs {
		rec.Key = ks[i]
		if _, err := s.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
}

// GET /runs gives each run its suite, its means (read in O(1)) and
// the trend of its suite's pass rates, listed or not: oldest first, ending
// with its own, at most MaxTrend; a run gone is not in it.
func TestRunListTrend(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	start := time.Now().Add(-time.Hour)
	v := func(f float64) *float64 { return &f }
	// nightly-2025010N: N of its N+1 evals pass (score 1; the failure 0.5).
	const nightlies = MaxTrend + 3
	for n := 1; n <= nightlies; n++ {
		var recs []run.Record
		for range n {
			recs = append(recs, run.Record{Status: run.Passed, Score: v(1)})
		}
		recs = append(recs, run.Record{Status: run.Failed, Score: v(0.5)})
		finished(t, b, fmt.Sprintf("nightly-2025-01-%02d", n), start.Add(time.Duration(n)*time.Minute), nil, recs...)
	}
	// Of suite nightly by its meta; of a suite of its own by its name; and
	// one where nothing ended (no pass rate, no mean score).
	finished(t, b, "adhoc", start.Add(30*time.Minute), map[string]string{"suite": "nightly"}, run.Record{Status: run.Errored})
	finished(t, b, "other-20250101-120000", start.Add(31*time.Minute), nil, run.Record{Status: run.Passed})
	finished(t, b, "empty", start.Add(32*time.Minute), nil, run.Record{Status: run.Cancelled})

	rates := func(ps []TrendPoint) (names []string, rates []float64) {
		for _, p := range ps {
			names, rates = append(names, p.Name), append(rates, p.PassRate)
		}
		return names, rates
	}
	list := decodeAs[RunList](t, do(t, "GET", b.url+"/runs?limit=100", ""), 200)
	byName := map[string]RunItem{}
	for _, it := range list.Runs {
		byName[it.Name] = it
	}
	if len(list.Runs) != nightlies+3 || list.Runs[0].Name != "empty" {
		t.Fatalf("%d runs, first %s", len(list.Runs), list.Runs[0].Name)
	}
	adhoc := byName["adhoc"]
	names, got := rates(adhoc.Trend)
	// The last 19 nightlies (5 … 23), then adhoc.
	if adhoc.Suite != "nightly" || len(names) != MaxTrend || names[0] != "nightly-2025-01-05" || names[MaxTrend-2] != "nightly-2025-01-23" || names[MaxTrend-1] != "adhoc" ||
		got[0] != 5.0/6 || got[MaxTrend-1] != 0 {
		t.Errorf("adhoc: suite %q, trend %v %v", adhoc.Suite, names, got)
	}
	if adhoc.MeanScore != nil {
		t.Errorf("adhoc has no score, yet a mean score of %v", *adhoc.MeanScore)
	}
	first := byName["nightly-2025-01-01"]
	if names, got := rates(first.Trend); first.Suite != "nightly" || !slices.Equal(names, []string{"nightly-2025-01-01"}) || got[0] != 0.5 ||
		first.MeanScore == nil || *first.MeanScore != 0.75 {
		t.Errorf("nightly-2025-01-01: suite %q, trend %v %v, mean score %v", first.Suite, names, got, first.MeanScore)
	}
	third := byName["nightly-2025-01-03"]
	if names, _ := rates(third.Trend); !slices.Equal(names, []string{"nightly-2025-01-01", "nightly-2025-01-02", "nightly-2025-01-03"}) || *third.MeanScore != 3.5/4 {
		t.Errorf("nightly-2025-01-03: trend %v, mean score %v", names, *third.MeanScore)
	}
	if o, e := byName["other-20250101-120000"], byName["empty"]; o.Suite != "other" || len(o.Trend) != 1 || e.Suite != "empty" || len(e.Trend) != 1 || e.Trend[0].PassRate != -1 {
		t.Errorf("other: %+v; empty: %+v", o, e)
	}

	// A trend reaches past the runs listed, and leaves out a run gone
	// (its keys expired), and one made again under its name in another
	// suite.
	for _, name := range []string{"nightly-2025-01-10", "nightly-2025-01-11"} {
		if err := b.client.Del(t.Context(), keys.ForRun(name).Script()...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	finished(t, b, "nightly-2025-01-11", start.Add(-time.Minute), map[string]string{"suite": "other"}, run.Record{Status: run.Passed})
	list = decodeAs[RunList](t, do(t, "GET", b.url+"/runs?limit=4", ""), 200)
	var want []string
	for n := 2; n <= 23; n++ {
		if n != 10 && n != 11 {
			want = append(want, fmt.Sprintf("nightly-2025-01-%02d", n))
		}
	}
	if names, got := rates(list.Runs[3].Trend); list.Runs[3].Name != "nightly-2025-01-23" || !slices.Equal(names, want) || got[0] != 2.0/3 {
		t.Errorf("with ?limit=4, %s's trend %v %v; want %v", list.Runs[3].Name, names, got, want)
	}
	if names, _ := rates(list.Runs[2].Trend); !slices.Equal(names, append(want[1:], "adhoc")) {
		t.Errorf("with ?limit=4, adhoc's trend %v", names)
	}
	for _, name := range []string{"nightly-2025-01-10", "nightly-2025-01-11"} {
		if b.client.ZScore(t.Context(), keys.Suite("nightly"), name).Err() == nil {
			t.Errorf("%s, gone, is still in its suite's index", name)
		}
	}
	raw := string(do(t, "GET", b.url+"/runs?limit=1", "").body)
	for _, want := range []string{`"suite":"empty"`, `"trend":[{"name":"empty","pass_rate":-1}]`} {
		if !strings.Contains(raw, want) {
			t.Errorf("GET /runs %s\nlacks %s", raw, want)
		}
	}
}

// GET /runs/{name} has the histograms of the score and of each metric,
// and the groups, at most run.MaxSummaryGroups with a count of the rest.
func TestSummaryChartsOverHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	v := func(f float64) *float64 { return &f }
	var recs []run.Record
	for i := range run.MaxSummaryGroups + 2 {
		recs = append(recs, run.Record{Status: run.Passed, Score: v(float64(i % 3)), Group: fmt.Sprintf("g%03d", i), Metrics: map[string]float64{"acc": 0.5}})
	}
	recs[0].Status, recs[0].Metrics = run.Failed, map[string]float64{"acc": 0.5, "<b>f1</b>": 1}
	finished(t, b, "charts", time.Now(), nil, recs...)
	a := do(t, "GET", b.url+"/runs/charts", "")
	s := decodeAs[run.Summary](t, a, 200)
	// Scores 0, 1, 2, 0, 1, 2 …: 68 zeros (i = 0, 3 … 201), 67 ones and 67 twos.
	wantScore := &run.Histogram{Min: 0, Max: 2, Counts: make([]int, run.HistogramBins)}
	wantScore.Counts[0], wantScore.Counts[10], wantScore.Counts[19] = 68, 67, 67
	if !reflect.DeepEqual(s.ScoreHistogram, wantScore) {
		t.Errorf("score histogram %+v, want %+v", s.ScoreHistogram, wantScore)
	}
	wantMetrics := map[string]run.Histogram{"acc": {Min: 0.5, Max: 0.5, Counts: []int{run.MaxSummaryGroups + 2}}, "<b>f1</b>": {Min: 1, Max: 1, Counts: []int{1}}}
	if !reflect.DeepEqual(s.MetricHistograms, wantMetrics) {
		t.Errorf("metric histograms %+v, want %+v", s.MetricHistograms, wantMetrics)
	}
	if len(s.Groups) != run.MaxSummaryGroups || s.MoreGroups != 2 || s.Groups[0].Group != "g000" || s.Groups[0].Failed != 1 || s.Groups[0].PassRate != 0 {
		t.Errorf("%d groups, %d more, first %+v", len(s.Groups), s.MoreGroups, s.Groups[0])
	}
	for _, want := range []string{`"score_histogram":{"min":0,"max":2,"counts":[68,`, `"metric_histograms":{`, `"more_groups":2`} {
		if !strings.Contains(string(a.body), want) {
			t.Errorf("summary lacks %s", want)
		}
	}
}

// openapi.json documents every field of the answers the charts read: each
// JSON name of the Go type is a property of its schema (its allOf's
// included).
func TestOpenAPIDocumentsChartFields(t *testing.T) {
	t.Parallel()
	var doc struct {
		Components struct {
			Schemas map[string]schema `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatal(err)
	}
	var properties func(name string) map[string]bool
	properties = func(name string) map[string]bool {
		out := map[string]bool{}
		var add func(s schema)
		add = func(s schema) {
			if s.Ref != "" {
				for p := range properties(strings.TrimPrefix(s.Ref, "#/components/schemas/")) {
					out[p] = true
				}
			}
			for p := range s.Properties {
				out[p] = true
			}
			for _, sub := range s.AllOf {
				add(sub)
			}
		}
		add(doc.Components.Schemas[name])
		return out
	}
	for name, v := range map[string]any{"Summary": run.Summary{}, "RunItem": RunItem{}, "Histogram": run.Histogram{}, "TrendPoint": TrendPoint{}, "GroupSummary": run.GroupSummary{}} {
		documented := properties(name)
		for _, field := range jsonNames(reflect.TypeOf(v)) {
			if !documented[field] {
				t.Errorf("openapi.json: %s lacks %q", name, field)
			}
		}
	}
}

type schema struct {
	Ref        string                     `json:"$ref"`
	Properties map[string]json.RawMessage `json:"properties"`
	AllOf      []schema                   `json:"allOf"`
}

// jsonNames are the names of a struct's fields in JSON, its embedded
// structs' included.
func jsonNames(t reflect.Type) []string {
	var names []string
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case tag == "-" || !f.IsExported():
		case f.Anonymous && tag == "":
			names = append(names, jsonNames(f.Type)...)
		case tag != "":
			names = append(names, tag)
		default:
			names = append(names, f.Name)
		}
	}
	return names
}
