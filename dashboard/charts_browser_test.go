//go:build browser

package dashboard

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
)

// The run page draws the histogram of the score and of each metric from
// the summary's bins (a select switches which), or a muted line when
// nothing was graded, and tables the run's groups; the runs list shows
// each run's mean score and the pass rates of its suite's runs, a point
// each. Groups and suites from users show as text, never as markup.
func TestRunChartsInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{}, nil)
	// The grader answers the spec itself: each eval's spec is its result.
	echo := map[string]string{"kind": "echo"}
	fleet(t, b, 2, refexec.Options{Exec: `cat`}, func(int) map[string]string { return echo })
	runWorker(t, b, 4)
	const markup = `<b id=injected>code</b>`
	const suiteMarkup = `<i id=injected-suite>suite</i>`
	result := func(id, status string, score float64, group string, metrics map[string]float64) runEval {
		spec := map[string]any{"status": status, "score": score}
		if metrics != nil {
			spec["metrics"] = metrics
		}
		return runEval{EvalID: id, Spec: spec, Require: echo, Group: group}
	}
	errored := runEval{EvalID: "e", Spec: map[string]any{"status": "errored", "error": "no grade"}, Require: echo}
	// Three runs of suite nightly, one after the other (the list orders
	// them by when they were submitted), then one of another suite.
	runs := []runRequest{
		{Name: "nightly-2025-01-01", Evals: []runEval{errored}},
		{Name: "nightly-2025-01-02", Evals: []runEval{result("a", "passed", 1, "", nil), result("b", "failed", 0, "", nil)}},
		{Name: "nightly-2025-01-03", Evals: []runEval{
			result("m1", "passed", 0, "math", map[string]float64{"acc": 1}),
			result("m2", "passed", 0.5, "math", map[string]float64{"acc": 1}),
			result("m3", "failed", 1, "math", map[string]float64{"acc": 0}),
			result("c1", "passed", 1, markup, map[string]float64{"acc": 1, "f1": 0.5}),
			result("c2", "failed", 1, markup, nil),
			result("x", "passed", 0.25, "", nil),
		}},
		{Name: "other", Meta: map[string]string{"suite": suiteMarkup}, Evals: []runEval{result("a", "passed", 1, "", nil)}},
	}
	for _, rr := range runs {
		rr.MaxRetry = new(int)
		submitRun(t, b, rr)
		waitRun(t, b, rr.Name, len(rr.Evals), time.Minute)
	}

	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/runs/nightly-2025-01-03")); err != nil {
		t.Fatal(err)
	}
	histogram := func() bars {
		return evalJS[bars](t, ctx, `(() => {
			const svg = document.getElementById("hist");
			return {Which: svg.dataset.which || "", Bins: svg.dataset.bins || "", Counts: [...svg.querySelectorAll("rect.hbar")].map((r) => r.dataset.count)};
		})()`)
	}
	// binned lays counts out over HistogramBins bars.
	binned := func(counts map[int]int) []string {
		out := make([]string, run.HistogramBins)
		for i := range out {
			out[i] = fmt.Sprint(counts[i])
		}
		return out
	}
	pollTrue(t, ctx, "the score's histogram", `document.querySelectorAll("#hist rect.hbar").length > 0`, 15*time.Second)
	// Scores 0, 0.5, 1, 1, 1 and 0.25 over 0 to 1: bins 0, 10, 19 (three) and 5.
	if got, want := histogram(), (bars{"score", "20", binned(map[int]int{0: 1, 5: 1, 10: 1, 19: 3})}); !equalBars(got, want) {
		t.Errorf("score histogram %+v, want %+v", got, want)
	}
	if opts := evalJS[[]string](t, ctx, `[...document.getElementById("hist-select").options].map((o) => o.value)`); !slices.Equal(opts, []string{"score", "metric:acc", "metric:f1"}) {
		t.Errorf("histograms offered: %v", opts)
	}
	pick := func(value string) {
		t.Helper()
		evalJS[bool](t, ctx, fmt.Sprintf(`(() => { const s = document.getElementById("hist-select"); s.value = %q; return s.dispatchEvent(new Event("change")); })()`, value))
	}
	pick("metric:f1")
	// One value: one bin.
	if got, want := histogram(), (bars{"metric:f1", "1", []string{"1"}}); !equalBars(got, want) {
		t.Errorf("f1 histogram %+v, want %+v", got, want)
	}
	pick("metric:acc")
	if got, want := histogram(), (bars{"metric:acc", "20", binned(map[int]int{0: 1, 19: 3})}); !equalBars(got, want) {
		t.Errorf("acc histogram %+v, want %+v", got, want)
	}

	type group struct{ Name, Evals, PassRate, Mean string }
	groups := evalJS[[]group](t, ctx, `[...document.querySelectorAll("#groups tr[data-group]")].map((tr) => ({
		Name: tr.querySelector("td.group").innerText, Evals: tr.querySelector("td.evals").innerText,
		PassRate: tr.querySelector("td.pass-rate").innerText, Mean: tr.querySelector("td.mean-score").innerText}))`)
	wantGroups := []group{{markup, "2", "50% of 2", "1"}, {"math", "3", "67% of 3", "0.5"}}
	if !slices.Equal(groups, wantGroups) {
		t.Errorf("groups %+v, want %+v", groups, wantGroups)
	}
	if evalJS[bool](t, ctx, `document.getElementById("injected") !== null`) {
		t.Error("the page rendered a group's name as markup")
	}
	screenshot(t, ctx, "run-charts")

	// A run where nothing was graded: a muted line, no chart, no groups.
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/runs/nightly-2025-01-01")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the run with nothing graded", `document.getElementById("retries").innerText === "0"`, 15*time.Second)
	if v := evalJS[[]bool](t, ctx, `["hist-empty", "hist", "hist-pick", "groups-section"].map((id) => document.getElementById(id).hidden)`); !slices.Equal(v, []bool{false, true, true, true}) {
		t.Errorf("hidden (empty line, chart, select, groups) = %v, want the empty line alone", v)
	}

	// The list: each run's mean score and its metrics' means, and a point
	// per run of its suite so far, the row's own highlighted.
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/runs")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the list", `document.querySelectorAll("#runs svg.spark").length === 4`, 15*time.Second)
	type row struct {
		Mean    string
		Metrics string
		Points  []string // data-run of each point, in order
		Current string
	}
	rows := evalJS[map[string]row](t, ctx, `(() => {
		const out = {};
		for (const tr of document.querySelectorAll("#runs tr[data-run]")) out[tr.dataset.run] = {
			Mean: tr.querySelector("td.mean-score").innerText,
			Metrics: tr.querySelector("td.metrics").innerText,
			Points: [...tr.querySelectorAll("svg.spark circle.pt")].map((c) => c.dataset.run),
			Current: (tr.querySelector("svg.spark circle.current") || {dataset: {}}).dataset.run || ""};
		return out;
	})()`)
	for name, want := range map[string]row{
		"nightly-2025-01-01": {"–", "–", []string{"nightly-2025-01-01"}, "nightly-2025-01-01"},
		"nightly-2025-01-02": {"0.5", "–", []string{"nightly-2025-01-01", "nightly-2025-01-02"}, "nightly-2025-01-02"},
		"nightly-2025-01-03": {"0.625", "acc 0.75 · f1 0.5", []string{"nightly-2025-01-01", "nightly-2025-01-02", "nightly-2025-01-03"}, "nightly-2025-01-03"},
		"other":              {"1", "–", []string{"other"}, "other"},
	} {
		if got := rows[name]; got.Mean != want.Mean || got.Metrics != want.Metrics || !slices.Equal(got.Points, want.Points) || got.Current != want.Current {
			t.Errorf("%s: %+v, want %+v", name, got, want)
		}
	}
	if title := evalJS[string](t, ctx, `document.querySelector('#runs tr[data-run="other"] svg.spark > title').textContent`); title != "suite "+suiteMarkup+": the pass rates of its last 1 runs" {
		t.Errorf("other's sparkline says %q", title)
	}
	// The list fits 1,280 px, the columns that matter first, the rest on
	// demand.
	if !evalJS[bool](t, ctx, `window.innerWidth <= 1280 && document.getElementById("runs-table").getBoundingClientRect().right <= window.innerWidth`) {
		t.Errorf("the runs table is %v px wide in a window of %v", evalJS[float64](t, ctx, `document.getElementById("runs-table").getBoundingClientRect().right`), evalJS[float64](t, ctx, `window.innerWidth`))
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#all-columns"))); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "all columns shown on demand", `[...document.querySelectorAll("#runs-table th")].some((th) => th.innerText === "Cancelled" && th.offsetParent !== null)`, 5*time.Second)
	if evalJS[bool](t, ctx, `document.getElementById("injected-suite") !== null`) {
		t.Error("the list rendered a suite as markup")
	}
	screenshot(t, ctx, "runs-trend")
}

// bars are the histogram the run page shows: which, its bins, and the
// data-count of each bar, in order.
type bars struct {
	Which  string
	Bins   string
	Counts []string
}

func equalBars(a, b bars) bool {
	return a.Which == b.Which && a.Bins == b.Bins && slices.Equal(a.Counts, b.Counts)
}
