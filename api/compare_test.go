package api

import (
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/run"
)

// GET /runs/{name}/compare gives both runs' counts and pass rates, the
// deltas of the pass rate, the metrics and the groups (the largest
// regression first), and the evals newly failing and newly passing, each
// list capped at ?limit with its count; bad queries are 400, unknown runs
// 404 naming the run.
func TestCompareRuns(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	score := func(v float64) *float64 { return &v }
	record := func(name string, keys []string, recs ...run.Record) {
		t.Helper()
		if err := b.handler.runs.Create(t.Context(), run.Run{Name: name, Pool: b.pool.Name(), CreatedAt: time.Now(), Keys: keys}); err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			rec.At = time.Now()
			if _, err := b.handler.runs.Finish(t.Context(), name, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	record("base", []string{"e1", "e2", "e3", "e4", "e5", "e6"},
		run.Record{Key: "e1", Status: run.Passed, Group: "math", Score: score(1), Metrics: map[string]float64{"acc": 1}},
		run.Record{Key: "e2", Status: run.Passed, Group: "math"},
		run.Record{Key: "e3", Status: run.Failed, Group: "code", Score: score(0), Metrics: map[string]float64{"acc": 0}},
		run.Record{Key: "e4", Status: run.Passed, Group: "code"},
		run.Record{Key: "e5", Status: run.Passed, Group: "safety"},
		run.Record{Key: "e6", Status: run.Errored, Group: "safety"},
	)
	// e7 is in head only (in neither list), e8 has not ended.
	record("head", []string{"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"},
		run.Record{Key: "e1", Status: run.Failed, Group: "math", Score: score(0), Metrics: map[string]float64{"acc": 0}},
		run.Record{Key: "e2", Status: run.Errored, Group: "math"},
		run.Record{Key: "e3", Status: run.Passed, Group: "code", Score: score(1), Metrics: map[string]float64{"acc": 1}},
		run.Record{Key: "e4", Status: run.Passed, Group: "code", Score: score(1), Metrics: map[string]float64{"acc": 1}},
		run.Record{Key: "e5", Status: run.Passed, Group: "safety"},
		run.Record{Key: "e6", Status: run.Passed, Group: "safety"},
		run.Record{Key: "e7", Status: run.Failed, Group: "safety"},
	)

	for _, tc := range []struct {
		name, query              string
		failing, passing, groups []string
	}{
		{"default limit", "?against=base", []string{"e1", "e2"}, []string{"e3", "e6"}, []string{"math", "safety", "code"}},
		{"limit 1", "?against=base&limit=1", []string{"e1"}, []string{"e3"}, []string{"math"}},
	} {
		c := decodeAs[RunComparison](t, do(t, "GET", b.url+"/runs/head/compare"+tc.query, ""), 200)
		if c.Base != (ComparedRun{Name: "base", Counts: run.Counts{Size: 6, Passed: 4, Failed: 1, Errored: 1}, PassRate: 4.0 / 6}) ||
			c.Head != (ComparedRun{Name: "head", Counts: run.Counts{Size: 8, Passed: 4, Failed: 2, Errored: 1, Pending: 1}, PassRate: 4.0 / 7}) {
			t.Errorf("%s: base %+v, head %+v", tc.name, c.Base, c.Head)
		}
		if c.PassRate == nil || *c.PassRate != (run.Delta{Before: 4.0 / 6, After: 4.0 / 7, Delta: 4.0/7 - 4.0/6}) {
			t.Errorf("%s: pass rate %+v", tc.name, c.PassRate)
		}
		if acc, ok := c.Metrics["acc"]; !ok || acc.Before != 0.5 || math.Abs(acc.After-2.0/3) > 1e-12 || len(c.Metrics) != 1 {
			t.Errorf("%s: metrics %+v", tc.name, c.Metrics)
		}
		var groups []string
		for _, g := range c.Groups {
			groups = append(groups, g.Group)
		}
		if !slices.Equal(groups, tc.groups) || c.GroupCount != 3 || c.Groups[0].PassRate != (run.Delta{Before: 1, After: 0, Delta: -1}) {
			t.Errorf("%s: groups %+v (%d), want %v of 3, math first at -1", tc.name, c.Groups, c.GroupCount, tc.groups)
		}
		if !slices.Equal(c.NewlyFailing.Keys, tc.failing) || c.NewlyFailing.Count != 2 || !slices.Equal(c.NewlyPassing.Keys, tc.passing) || c.NewlyPassing.Count != 2 {
			t.Errorf("%s: newly failing %+v, newly passing %+v; want %v and %v, of 2 each", tc.name, c.NewlyFailing, c.NewlyPassing, tc.failing, tc.passing)
		}
	}

	// A run compared with itself: nothing changed, the lists empty, not null.
	a := do(t, "GET", b.url+"/runs/base/compare?against=base", "")
	if c := decodeAs[RunComparison](t, a, 200); c.NewlyFailing.Count != 0 || c.PassRate.Delta != 0 ||
		!strings.Contains(string(a.body), `"newly_failing":{"count":0,"keys":[]}`) {
		t.Errorf("base against itself: %s", a)
	}

	for _, tc := range []struct {
		name, path string
		code       int
		want       string // the error's end
	}{
		{"no against", "/runs/head/compare", http.StatusBadRequest, "is missing"},
		{"limit 0", "/runs/head/compare?against=base&limit=0", http.StatusBadRequest, "want 1 to 1000"},
		{"limit over the cap", "/runs/head/compare?against=base&limit=1001", http.StatusBadRequest, "want 1 to 1000"},
		{"limit not a number", "/runs/head/compare?against=base&limit=all", http.StatusBadRequest, "want 1 to 1000"},
		{"unknown run", "/runs/nope/compare?against=base", http.StatusNotFound, "run not found: nope"},
		{"unknown base", "/runs/head/compare?against=nope", http.StatusNotFound, "run not found: nope"},
		{"base no run can be", "/runs/head/compare?against=" + url.QueryEscape("not a name"), http.StatusNotFound, "run not found: not a name"},
	} {
		if a := do(t, "GET", b.url+tc.path, ""); a.code != tc.code || !strings.HasSuffix(a.errMsg(), tc.want) {
			t.Errorf("%s: GET %s: %s, want %d ending %q", tc.name, tc.path, a, tc.code, tc.want)
		}
	}
}
