//go:build browser

package dashboard

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/evalpool/evalpool/refexec"
)

// The compare page, opened bare, offers the runs to pick and compares the
// two picked: their pass rates and the delta, the groups' (the largest
// regression first, one bar each in the chart), the evals newly failing
// (linked to the head run's eval) and newly passing; names with markup in
// them are shown as text; an unknown run is one line that names it.
func TestComparePageInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{}, nil)
	fleet(t, b, 2, refexec.Options{}, nil)
	runWorker(t, b, 2)
	const markup = "<img src=x onerror=alert(1)>"
	const markupKey = "<img/src=x/onerror=alert(1)>" // an eval ID has no spaces
	// The reference executors grade as the spec says: in the head run, m1
	// and the markup key newly fail and c1 newly passes.
	suite := func(name string, failing ...string) {
		rr := runRequest{Name: name}
		for _, e := range []struct{ key, group string }{{"m1", "math"}, {"m2", "math"}, {"m3", "math"}, {"c1", "code"}, {"c2", "code"}, {markupKey, markup}, {"x2", markup}} {
			grade := "passed"
			if slices.Contains(failing, e.key) {
				grade = "failed"
			}
			rr.Evals = append(rr.Evals, runEval{EvalID: e.key, Group: e.group, Spec: map[string]any{"grade": grade, "sleep_ms": 10}})
		}
		submitRun(t, b, rr)
	}
	suite("nightly-a", "c1")
	suite("nightly-b", "m1", markupKey)
	waitRun(t, b, "nightly-a", 7, 30*time.Second)
	waitRun(t, b, "nightly-b", 7, 30*time.Second)
	ctx := browser(t)

	// Bare: the picker, its suggestions the runs.
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/compare")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the picker", `!document.getElementById("pick").hidden && document.getElementById("compare").hidden && document.querySelectorAll("#run-names option").length === 2`, 10*time.Second)
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#pick-base"), "nightly-a"),
		chromedp.SendKeys(chromedp.CSS("#pick-head"), "nightly-b"),
		chromedp.Click(chromedp.CSS(`#pick input[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("#compare")),
	); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the comparison", `document.querySelectorAll("#groups tr[data-group]").length === 3`, 10*time.Second)
	screenshot(t, ctx, "compare")
	if u := evalJS[string](t, ctx, `location.href`); u != b.url+"/compare?base=nightly-a&head=nightly-b" {
		t.Errorf("the picker went to %s", u)
	}

	type view struct {
		BaseRate, HeadRate, Delta, Tile, BaseLink, HeadLink, Failing, Passing string
		Groups, Bars                                                          []string
		Math, MarkupRow                                                       []string
		FailingKeys, PassingKeys                                              []string
		Elements                                                              bool
	}
	v := evalJS[view](t, ctx, `(() => {
		const txt = (id) => document.getElementById(id).textContent;
		const cells = (tr) => tr ? [...tr.children].map((td) => td.textContent) : [];
		const rows = [...document.querySelectorAll("#groups tr[data-group]")];
		return {BaseRate: txt("base-rate"), HeadRate: txt("head-rate"), Delta: txt("rate-delta"), Tile: txt("pass-rate-delta"),
			BaseLink: document.querySelector("#base-name a").href, HeadLink: document.querySelector("#head-name a").href,
			Failing: txt("failing-count"), Passing: txt("passing-count"),
			Groups: rows.map((tr) => tr.dataset.group),
			Bars: [...document.querySelectorAll("#chart rect.bar")].map((r) => r.dataset.group),
			Math: cells(rows.find((tr) => tr.dataset.group === "math")),
			MarkupRow: cells(rows[0]),
			FailingKeys: [...document.querySelectorAll("#newly-failing li[data-key] a")].map((a) => a.textContent),
			PassingKeys: [...document.querySelectorAll("#newly-passing li[data-key] a")].map((a) => a.textContent),
			Elements: document.querySelector("img, #groups td *, #newly-failing a *, #chart text *") !== null};
	})()`)
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"base pass rate", v.BaseRate, "85.7%"},
		{"head pass rate", v.HeadRate, "71.4%"},
		{"pass rate delta", v.Delta, "-14.3 pp"},
		{"pass rate delta tile", v.Tile, "-14.3 pp"},
		{"base run link", v.BaseLink, b.url + "/runs/nightly-a"},
		{"head run link", v.HeadLink, b.url + "/runs/nightly-b"},
		{"newly failing count", v.Failing, "2"},
		{"newly passing count", v.Passing, "1"},
		{"groups, the largest regression first", v.Groups, []string{markup, "math", "code"}},
		{"chart bars", v.Bars, []string{markup, "math", "code"}},
		{"math row", v.Math, []string{"math", "100.0%", "66.7%", "-33.3 pp"}},
		{"markup group row", v.MarkupRow, []string{markup, "100.0%", "50.0%", "-50.0 pp"}},
		{"newly failing", v.FailingKeys, []string{"m1", markupKey}},
		{"newly passing", v.PassingKeys, []string{"c1"}},
	} {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %q, want %q", c.what, c.got, c.want)
		}
	}
	if v.Elements {
		t.Error("the page rendered a name as markup")
	}

	follow(t, ctx, `#newly-failing li[data-key="m1"] a`, b.url+"/evals/nightly-b/m1")
	pollTrue(t, ctx, "the newly failing eval's page", `document.getElementById("outcome").innerText === "failed"`, 10*time.Second)

	for _, tc := range []struct{ query, unknown string }{
		{"?base=nightly-a&head=nope", "nope"},
		{"?base=gone&head=nightly-b", "gone"},
	} {
		if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/compare"+tc.query)); err != nil {
			t.Fatal(err)
		}
		pollTrue(t, ctx, tc.query+": unknown run", fmt.Sprintf(`!document.getElementById("missing").hidden && document.getElementById("missing").innerText === %q && document.getElementById("compare").hidden`,
			"No such run: "+tc.unknown+" (or it is older than its retention)."), 10*time.Second)
	}
}
