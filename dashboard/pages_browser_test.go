//go:build browser

package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/api"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/worker"
)

// fleet serves n reference executors on loopback until the test ends and
// registers them, labelled by labels(i) when labels is not nil.
func fleet(t *testing.T, b *testBundle, n int, opts refexec.Options, labels func(i int) map[string]string) []string {
	t.Helper()
	var urls []string
	for i := range n {
		s, err := refexec.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(s)
		t.Cleanup(ts.Close)
		e := pool.Executor{URL: ts.URL}
		if labels != nil {
			e.Labels = labels(i)
		}
		if _, err := b.pool.Register(t.Context(), e); err != nil {
			t.Fatal(err)
		}
		urls = append(urls, ts.URL)
	}
	return urls
}

// runWorker runs a real worker on the bundle's pool until the test ends.
func runWorker(t *testing.T, b *testBundle, concurrency int) {
	t.Helper()
	w, err := evalpool.NewWorker(b.client, evalpool.WorkerConfig{Pools: []string{b.pool.Name()}, Config: worker.Config{
		Concurrency: concurrency, Cleanup: worker.CleanupInline,
		PollInterval: 20 * time.Millisecond, NoExecutorDelay: 20 * time.Millisecond,
		RetryDelay: func(int) time.Duration { return 10 * time.Millisecond },
	}})
	if err != nil {
		t.Fatal(err)
	}
	evaltest.Run(t, "worker", w.Run)
}

// submitRun submits a run through the API.
func submitRun(t *testing.T, b *testBundle, body any) {
	t.Helper()
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	if resp, out := req(t, "POST", b.url+api.Prefix+"/runs", string(raw), "Content-Type", "application/json"); resp.StatusCode != http.StatusCreated {
		t.Fatalf("submit run: %d %.300s", resp.StatusCode, out)
	}
}

// waitRun waits until at least done evals of the run ended.
func waitRun(t *testing.T, b *testBundle, name string, done int, timeout time.Duration) run.Counts {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var c run.Counts
		code, body := get(t, b.url+api.Prefix+"/runs/"+name+"/progress")
		if err := json.Unmarshal([]byte(body), &c); code != 200 || err != nil {
			t.Fatalf("progress of %s: %d %.200s", name, code, body)
		}
		if c.Done() >= done {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: %+v after %s, want %d done", name, c, timeout, done)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// results are the run's results by eval key.
func results(t *testing.T, b *testBundle, name string) map[string]api.ResultLine {
	t.Helper()
	resp, err := http.Get(b.url + api.Prefix + "/runs/" + name + "/results")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]api.ResultLine{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l api.ResultLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		out[l.Key] = l
	}
	return out
}

type runEval struct {
	EvalID  string            `json:"eval_id"`
	Spec    map[string]any    `json:"spec"`
	Require map[string]string `json:"require,omitempty"`
	Group   string            `json:"group,omitempty"`
}

type runRequest struct {
	Name     string            `json:"name"`
	MaxRetry *int              `json:"max_retry,omitempty"`
	Meta     map[string]string `json:"meta,omitempty"`
	Evals    []runEval         `json:"evals"`
}

// pollTrue waits until the page's expression is true.
func pollTrue(t *testing.T, ctx context.Context, what, expr string, timeout time.Duration) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(timeout))); err != nil {
		text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("%s: %v; the page shows:\n%.2000s", what, err, text)
	}
}

// follow navigates to where the link sel leads, which must be want.
func follow(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	href := evalJS[string](t, ctx, fmt.Sprintf(`document.querySelector(%q).href`, sel))
	if href != want {
		t.Fatalf("%s leads to %s, want %s", sel, href, want)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(href)); err != nil {
		t.Fatal(err)
	}
}

func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// The runs page lists a run with its progress and pass rate; the run's
// page shows its progress live as evals end (no reload), its pass rate,
// counts, scores, durations, and its failures with their errors (as text)
// and links to their tasks in Asynqmon, whose task page shows the eval.
func TestRunsPagesInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{}, nil)
	fleet(t, b, 3, refexec.Options{}, func(int) map[string]string { return map[string]string{"kind": "sim"} })
	// One executor's command fails; another's grades failed, with markup in
	// what it answers besides its grade.
	fleet(t, b, 1, refexec.Options{Exec: `echo 'CUDA error: out of memory' >&2; exit 3`}, func(int) map[string]string { return map[string]string{"kind": "broken"} })
	const markup = `<b id=injected>markup</b>`
	fleet(t, b, 1, refexec.Options{Exec: `cat >/dev/null; echo '{"status":"failed","score":0.25,"output":{"note":"` + markup + `"}}'`},
		func(int) map[string]string { return map[string]string{"kind": "noisy"} })
	runWorker(t, b, 4)
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/runs")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the empty list", `document.querySelector("#runs td.muted") !== null`, 10*time.Second)

	sim := map[string]string{"kind": "sim"}
	rr := runRequest{Name: "nightly-1", MaxRetry: new(int)}
	for i := 1; i <= 6; i++ {
		rr.Evals = append(rr.Evals, runEval{EvalID: fmt.Sprint("k", i), Spec: map[string]any{"sleep_ms": 30}, Require: sim})
	}
	rr.Evals = append(rr.Evals,
		runEval{EvalID: "bad-1", Spec: map[string]any{"grade": "failed", "sleep_ms": 30}, Require: sim},
		runEval{EvalID: "broken-1", Spec: map[string]any{}, Require: map[string]string{"kind": "broken"}},
		runEval{EvalID: "noisy-1", Spec: map[string]any{}, Require: map[string]string{"kind": "noisy"}},
		// The slow one is still running when the page first looks.
		runEval{EvalID: "slow", Spec: map[string]any{"sleep_ms": 8000}, Require: sim},
	)
	submitRun(t, b, rr)

	pollTrue(t, ctx, "the list shows the run", `document.querySelector('#runs tr[data-run="nightly-1"] a') !== null`, 10*time.Second)
	// Follow the link (a Navigate waits for the page, a click would not).
	follow(t, ctx, `#runs tr[data-run="nightly-1"] a`, b.url+"/runs/nightly-1")
	pollTrue(t, ctx, "the run's page while one eval runs",
		`document.getElementById("progress-text").innerText.startsWith("9 of 10 done") && document.getElementById("progress-text").innerText.includes("1 running")`, 15*time.Second)
	if p := evalJS[string](t, ctx, `location.pathname`); p != "/runs/nightly-1" {
		t.Errorf("the run's page is at %s", p)
	}
	if pr := evalJS[string](t, ctx, `document.getElementById("pass-rate").innerText`); pr != "67% of 9" {
		t.Errorf("pass rate while running = %q, want 67%% of 9", pr)
	}
	evalJS[bool](t, ctx, `window.notReloaded = true`)
	pollTrue(t, ctx, "the failures listed", `document.querySelectorAll("#failures tr[data-key]").length === 3`, 10*time.Second)

	type failure struct{ Status, Error, Href, Link string }
	fails := evalJS[map[string]failure](t, ctx, `(() => {
		const out = {};
		for (const tr of document.querySelectorAll("#failures tr[data-key]")) out[tr.dataset.key] = {
			Status: tr.dataset.status, Error: tr.querySelector("td.error").innerText,
			Href: tr.querySelector("a.task").href, Link: tr.querySelector("td a").href,
		};
		return out;
	})()`)
	wantHref, wantLink := b.url+"/monitoring/queues/evals%3Aweb/tasks/nightly-1%2Fbad-1", b.url+"/evals/nightly-1%2Fbad-1"
	if f := fails["bad-1"]; f.Status != "failed" || !strings.Contains(f.Error, "graded failed") || f.Href != wantHref || f.Link != wantLink {
		t.Errorf("bad-1: %+v, want failed, graded, linked to %s and its task at %s", f, wantLink, wantHref)
	}
	if f := fails["broken-1"]; f.Status != "errored" || !strings.Contains(f.Error, "exit status 3; stderr ends: CUDA error: out of memory") || !strings.HasSuffix(f.Href, "/tasks/nightly-1%2Fbroken-1") {
		t.Errorf("broken-1: %+v, want errored with its error", f)
	}
	if f := fails["noisy-1"]; f.Status != "failed" || !strings.Contains(f.Error, markup) || !strings.HasSuffix(f.Href, "/tasks/nightly-1%2Fnoisy-1") {
		t.Errorf("noisy-1: %+v, want failed with its output as text", f)
	}
	if evalJS[bool](t, ctx, `document.getElementById("injected") !== null`) {
		t.Error("the page rendered an executor's output as markup")
	}
	screenshot(t, ctx, "run-running")

	// The slow eval ends: the page shows it without a reload.
	pollTrue(t, ctx, "the run's end", `document.getElementById("progress-text").innerText.startsWith("10 of 10 done (100%)") && document.getElementById("p95").innerText !== "–" && document.getElementById("mean-score").innerText === "0.806"`, 20*time.Second)
	type view struct {
		Reloaded                                     bool
		PassRate, Mean, Median, P50, P95, Retries    string
		Passed, Failed, Errored, Running, Pending, N string
	}
	v := evalJS[view](t, ctx, `(() => {
		const txt = (id) => document.getElementById(id).innerText;
		const n = (k) => document.querySelector('#counts td[data-status="' + k + '"]').innerText;
		return {Reloaded: !window.notReloaded, PassRate: txt("pass-rate"), Mean: txt("mean-score"), Median: txt("median-score"),
			P50: txt("p50"), P95: txt("p95"), Retries: txt("retries"),
			Passed: n("passed"), Failed: n("failed"), Errored: n("errored"), Running: n("running"), Pending: n("pending"), N: n("size")};
	})()`)
	want := view{PassRate: "70% of 10", Mean: "0.806", Median: "1", P50: v.P50, P95: v.P95, Retries: "0",
		Passed: "7", Failed: "2", Errored: "1", Running: "0", Pending: "0", N: "10"}
	if v != want || !strings.HasSuffix(v.P50, " s") || !strings.HasSuffix(v.P95, " s") {
		t.Errorf("the ended run: %+v, want %+v", v, want)
	}
	screenshot(t, ctx, "run-ended")

	// Back to the list, and on to Asynqmon's page of the failed eval.
	follow(t, ctx, `#runs-link`, b.url+"/runs")
	pollTrue(t, ctx, "the list with the ended run",
		`(() => { const tr = document.querySelector('#runs tr[data-run="nightly-1"]'); return tr !== null && tr.querySelector(".pass-rate").innerText === "70% of 10" && tr.querySelector(".done").innerText === "10 (100%)"; })()`, 10*time.Second)
	screenshot(t, ctx, "runs")
	if err := chromedp.Do(ctx, chromedp.Navigate(wantHref)); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "Asynqmon's page of the failed eval", `document.body.innerText.includes("nightly-1/bad-1") && document.body.innerText.includes('"grade": "failed"')`, 20*time.Second)
	screenshot(t, ctx, "asynqmon-task")
}

// The run page lists every ended eval, 50 a page: Next and Previous page
// through them, each once; the outcome filter, the group select (filled
// from the run's groups) and the search box filter them; each eval links
// to its page; reasons show as text; and the counts above the list agree
// with its total.
func TestRunEvalsListInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{}, nil)
	sim := map[string]string{"kind": "sim"}
	fleet(t, b, 3, refexec.Options{}, func(int) map[string]string { return sim })
	const markup = `<b id=injected>markup</b>`
	fleet(t, b, 1, refexec.Options{Exec: `echo '` + markup + `' >&2; exit 3`}, func(int) map[string]string { return map[string]string{"kind": "noisy"} })
	runWorker(t, b, 4)
	rr := runRequest{Name: "evals-1", MaxRetry: new(int)}
	for i := 1; i <= 62; i++ {
		rr.Evals = append(rr.Evals, runEval{EvalID: fmt.Sprintf("p-%02d", i), Spec: map[string]any{}, Require: sim, Group: "math"})
	}
	for i := 1; i <= 7; i++ {
		rr.Evals = append(rr.Evals, runEval{EvalID: fmt.Sprint("bad-", i), Spec: map[string]any{"grade": "failed"}, Require: sim, Group: "code"})
	}
	rr.Evals = append(rr.Evals, runEval{EvalID: "noisy-1", Spec: map[string]any{}, Require: map[string]string{"kind": "noisy"}, Group: "code"})
	submitRun(t, b, rr)
	waitRun(t, b, "evals-1", 70, time.Minute)

	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/runs/evals-1")); err != nil {
		t.Fatal(err)
	}
	type page struct {
		Info, Total  string
		Keys         []string
		Statuses     []string
		Links        []string
		Counted      int // passed + failed + errored + cancelled, as the counts above show them
		Failed       string
		Next, Prev   bool
		GroupOptions []string
	}
	read := func() page {
		return evalJS[page](t, ctx, `(() => {
			const rows = [...document.querySelectorAll("#evals tr[data-key]")];
			const n = (k) => document.querySelector('#counts td[data-status="' + k + '"]').innerText;
			const sel = document.getElementById("f-group-select");
			return {Info: document.getElementById("evals-info").innerText, Total: document.getElementById("evals-total").dataset.total,
				Keys: rows.map((tr) => tr.dataset.key), Statuses: rows.map((tr) => tr.dataset.status), Links: rows.map((tr) => tr.querySelector("a.eval").href),
				Counted: ["passed", "failed", "errored", "cancelled"].reduce((s, k) => s + Number(n(k)), 0), Failed: n("failed"),
				Next: !document.getElementById("evals-next").disabled, Prev: !document.getElementById("evals-prev").disabled,
				GroupOptions: sel.hidden ? [] : [...sel.options].map((o) => o.value)};
		})()`)
	}
	wait := func(info string) page {
		t.Helper()
		pollTrue(t, ctx, "the evals "+info, fmt.Sprintf(`document.getElementById("evals-info").innerText === %q`, info), 10*time.Second)
		return read()
	}
	set := func(id, value, event string) {
		t.Helper()
		evalJS[bool](t, ctx, fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.value = %q; return e.dispatchEvent(new Event(%q)); })()`, id, value, event))
	}
	click := func(id string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#"+id))); err != nil {
			t.Fatal(err)
		}
	}

	p1 := wait("evals 1–50 of 70")
	if len(p1.Keys) != 50 || !p1.Next || p1.Prev || p1.Total != "70" || p1.Counted != 70 {
		t.Fatalf("first page: %+v", p1)
	}
	if want := b.url + "/evals/" + url.PathEscape("evals-1/"+p1.Keys[0]); p1.Links[0] != want {
		t.Errorf("%s links to %s, want %s", p1.Keys[0], p1.Links[0], want)
	}
	screenshot(t, ctx, "run-evals")
	click("evals-next")
	p2 := wait("evals 51–70 of 70")
	if len(p2.Keys) != 20 || p2.Next || !p2.Prev {
		t.Fatalf("second page: %+v", p2)
	}
	seen := map[string]bool{}
	for _, k := range append(p1.Keys, p2.Keys...) {
		if seen[k] {
			t.Errorf("%s listed twice", k)
		}
		seen[k] = true
	}
	if len(seen) != 70 {
		t.Errorf("the two pages list %d evals, want 70", len(seen))
	}
	click("evals-prev")
	if p := wait("evals 1–50 of 70"); !slices.Equal(p.Keys, p1.Keys) {
		t.Errorf("back to the first page: %v, want %v", p.Keys, p1.Keys)
	}

	// The outcome filter, from the first page again; the total is the
	// failed count above the list.
	click("evals-next")
	wait("evals 51–70 of 70")
	set("f-status", "failed", "change")
	failed := wait("evals 1–7 of 7")
	if len(failed.Keys) != 7 || failed.Total != failed.Failed || failed.Failed != "7" || failed.Next || failed.Prev || slices.ContainsFunc(failed.Statuses, func(s string) bool { return s != "failed" }) {
		t.Fatalf("failed: %+v", failed)
	}
	// The errored one's reason, markup of its grader's, shows as text.
	set("f-status", "errored", "change")
	if p := wait("evals 1–1 of 1"); !slices.Equal(p.Keys, []string{"noisy-1"}) {
		t.Fatalf("errored: %+v", p)
	}
	if evalJS[bool](t, ctx, `document.getElementById("injected") !== null`) {
		t.Error("the page rendered an executor's stderr as markup")
	}
	if r := evalJS[string](t, ctx, `document.querySelector('#evals tr[data-key="noisy-1"] td.reason').innerText`); !strings.Contains(r, markup) {
		t.Errorf("noisy-1's reason %q, want its stderr as text", r)
	}
	set("f-status", "failed", "change")
	wait("evals 1–7 of 7")
	// The search box, case-insensitive, on the eval IDs.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#f-q"), "BAD-3")); err != nil {
		t.Fatal(err)
	}
	if p := wait("evals 1–1"); !slices.Equal(p.Keys, []string{"bad-3"}) || p.Total != "" {
		t.Fatalf("searched bad-3: %+v", p)
	}
	// The group select holds the run's groups; with the search cleared and
	// any outcome, group code lists the 8 evals of code.
	if p := read(); !slices.Equal(p.GroupOptions, []string{"", "code", "math"}) {
		t.Fatalf("group options %q", p.GroupOptions)
	}
	set("f-q", "", "input")
	set("f-status", "", "change")
	set("f-group-select", "code", "change")
	if p := wait("evals 1–8"); len(p.Keys) != 8 || p.Counted != 70 {
		t.Fatalf("group code: %+v", p)
	}
}

// The pool page draws each executor's leases of the last 5 minutes: a span
// for each eval an executor ran, released, inside its bar, the rest of the
// bar idle; an open-ended span to now for a lease still running; and each
// executor's busy share.
func TestPoolTimelineInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{}, nil)
	urls := fleet(t, b, 3, refexec.Options{}, nil)
	runWorker(t, b, 3)
	rr := runRequest{Name: "tl"}
	for i := range 9 {
		rr.Evals = append(rr.Evals, runEval{EvalID: fmt.Sprint("k", i), Spec: map[string]any{"sleep_ms": 200}})
	}
	submitRun(t, b, rr)
	waitRun(t, b, "tl", 9, 30*time.Second)
	ran := map[string][]string{} // executor -> eval IDs
	for key, l := range results(t, b, "tl") {
		if l.Status != run.Passed || l.Executor == "" {
			t.Fatalf("eval %s: %+v", key, l)
		}
		ran[l.Executor] = append(ran[l.Executor], run.EvalID("tl", key))
	}
	held, err := b.pool.Acquire(t.Context(), "eval-held", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}

	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the timeline", fmt.Sprintf(`document.querySelectorAll(".tl .span-released").length === 9 && document.querySelector('tr[data-url=%q] .tl .span-running') !== null`, held.URL), 15*time.Second)
	screenshot(t, ctx, "pool-timeline")

	type span struct {
		How, Eval         string
		Left, Right       float64
		BarLeft, BarRight float64
	}
	type row struct {
		Spans    []span
		Busy     string
		BusyFrac float64
	}
	rows := evalJS[map[string]row](t, ctx, `(() => {
		const out = {};
		for (const tr of document.querySelectorAll("#executors tr")) {
			const bar = tr.querySelector(".tl").getBoundingClientRect();
			out[tr.dataset.url] = {
				Spans: [...tr.querySelectorAll(".tl .span")].map((s) => { const r = s.getBoundingClientRect(); return {How: s.dataset.how, Eval: s.dataset.eval, Left: r.left, Right: r.right, BarLeft: bar.left, BarRight: bar.right}; }),
				Busy: tr.querySelector("td.busy").innerText, BusyFrac: Number(tr.querySelector("td.busy").dataset.busy),
			};
		}
		return out;
	})()`)
	for _, u := range urls {
		r := rows[u]
		var released, running []string
		width := 0.0
		for _, s := range r.Spans {
			if s.Left < s.BarLeft-0.5 || s.Right > s.BarRight+0.5 || s.Right <= s.Left {
				t.Errorf("%s: span %+v outside its bar", u, s)
			}
			width += s.Right - s.Left
			switch s.How {
			case "released":
				released = append(released, s.Eval)
			case "running":
				running = append(running, s.Eval)
				if s.BarRight-s.Right > 1 {
					t.Errorf("%s: the running lease ends %gpx before now", u, s.BarRight-s.Right)
				}
			default:
				t.Errorf("%s: a span %+v", u, s)
			}
		}
		slices.Sort(released)
		want := slices.Sorted(slices.Values(ran[u]))
		if !slices.Equal(released, want) {
			t.Errorf("%s: released spans of %v, want those of the evals it ran, %v", u, released, want)
		}
		if u == held.URL != slices.Equal(running, []string{"eval-held"}) {
			t.Errorf("%s: running spans %v (eval-held is on %s)", u, running, held.URL)
		}
		if len(r.Spans) > 0 && width >= r.Spans[0].BarRight-r.Spans[0].BarLeft-1 {
			t.Errorf("%s: the spans fill the bar: no idle gap shows", u)
		}
		// 200 ms an eval in a 5-minute window: busy, yet far from full.
		busy := len(ran[u]) > 0 || u == held.URL
		if busy != (r.BusyFrac > 0) || r.BusyFrac > 0.05 || !strings.HasSuffix(r.Busy, "%") || busy == (r.Busy == "0%") {
			t.Errorf("%s: busy %q (%g) after %d evals", u, r.Busy, r.BusyFrac, len(ran[u]))
		}
	}
}

// With 120 executors the pool page shows 50, and the next control brings
// the next 50, then the last 20, and the previous control goes back.
func TestPoolPaginationInChromium(t *testing.T) {
	t.Parallel()
	var urls []string
	for i := range 120 {
		urls = append(urls, fmt.Sprintf("http://exec-%03d:9001", i))
	}
	_, b := setupTuned(t, Options{}, nil, urls...)
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/")); err != nil {
		t.Fatal(err)
	}
	type page struct {
		Info      string
		URLs      []string
		Next, Prv bool
	}
	read := func() page {
		return evalJS[page](t, ctx, `({Info: document.getElementById("page-info").innerText,
			URLs: [...document.querySelectorAll("#executors tr")].map((tr) => tr.dataset.url),
			Next: !document.getElementById("next").disabled, Prv: !document.getElementById("prev").disabled})`)
	}
	wait := func(info string) page {
		t.Helper()
		pollTrue(t, ctx, "page "+info, fmt.Sprintf(`document.getElementById("page-info").innerText === %q`, info), 10*time.Second)
		return read()
	}
	p1 := wait("executors 1–50 of 120")
	if len(p1.URLs) != 50 || !p1.Next || p1.Prv {
		t.Fatalf("first page: %d rows, next %v, previous %v", len(p1.URLs), p1.Next, p1.Prv)
	}
	screenshot(t, ctx, "pool-page-1")
	seen := map[string]bool{}
	for _, pg := range []struct {
		info string
		n    int
		next bool
	}{{"executors 51–100 of 120", 50, true}, {"executors 101–120 of 120", 20, false}} {
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#next"))); err != nil {
			t.Fatal(err)
		}
		p := wait(pg.info)
		if len(p.URLs) != pg.n || p.Next != pg.next || !p.Prv {
			t.Fatalf("%s: %d rows, next %v, previous %v", pg.info, len(p.URLs), p.Next, p.Prv)
		}
		for _, u := range p.URLs {
			seen[u] = true
		}
	}
	for _, u := range p1.URLs {
		seen[u] = true
	}
	if len(seen) != 120 {
		t.Errorf("the three pages show %d executors, want 120", len(seen))
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#prev"))); err != nil {
		t.Fatal(err)
	}
	if p := wait("executors 51–100 of 120"); len(p.URLs) != 50 || !p.Next {
		t.Errorf("back: %d rows, next %v", len(p.URLs), p.Next)
	}
}

// TestDocScreenshotsInChromium makes the screenshots of docs/img when
// EVALPOOL_DOC_SCREENSHOTS=1: a pool of 8 executors that ran a few runs
// over a minute and a half, one still running, then an eval a grader
// failed, and the last two nightly runs compared.
func TestDocScreenshotsInChromium(t *testing.T) {
	if os.Getenv("EVALPOOL_DOC_SCREENSHOTS") != "1" {
		t.Skip("set EVALPOOL_DOC_SCREENSHOTS=1 to write docs/img/pool.png, runs.png, run.png, eval.png and compare.png")
	}
	_, b := setupTuned(t, Options{}, nil)
	fleet(t, b, 8, refexec.Options{}, func(i int) map[string]string {
		return map[string]string{"gpu": []string{"a100", "h100"}[i%2], "zone": []string{"eu-1", "us-1"}[i/4]}
	})
	runWorker(t, b, 8)
	rng := rand.New(rand.NewPCG(1, 2))
	groups := []string{"algebra", "geometry", "probability", "number-theory", "combinatorics"}
	workload := func(name string, n, minMs, maxMs int, failRate float64) runRequest {
		rr := runRequest{Name: name}
		for i := range n {
			spec := map[string]any{"sleep_ms": minMs + rng.IntN(maxMs-minMs),
				"metrics": map[string]float64{"tokens": float64(200 + rng.IntN(800)), "steps": float64(1 + rng.IntN(9))}}
			if rng.Float64() < failRate {
				spec["grade"] = "failed"
			}
			rr.Evals = append(rr.Evals, runEval{EvalID: fmt.Sprintf("case-%03d", i), Spec: spec, Group: groups[i%len(groups)]})
		}
		return rr
	}
	submitRun(t, b, workload("nightly-2026-11-24", 60, 1000, 6000, 0.08))
	waitRun(t, b, "nightly-2026-11-24", 60, 2*time.Minute)
	time.Sleep(15 * time.Second)
	submitRun(t, b, workload("smoke-2026-11-25", 24, 300, 2000, 0))
	waitRun(t, b, "smoke-2026-11-25", 24, time.Minute)
	time.Sleep(10 * time.Second)
	submitRun(t, b, workload("nightly-2026-11-25", 80, 1000, 5000, 0.12))
	waitRun(t, b, "nightly-2026-11-25", 36, 2*time.Minute)

	ctx := browser(t)
	shoot := func(path, ready, name string, width, height int64) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height), chromedp.Navigate(b.url+path)); err != nil {
			t.Fatal(err)
		}
		pollTrue(t, ctx, name, ready, 20*time.Second)
		time.Sleep(300 * time.Millisecond)
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join("..", "docs", "img", name+".png")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
		if len(png) > 300<<10 {
			t.Errorf("%s is %d KB, want at most 300", out, len(png)>>10)
		}
		t.Logf("%s: %d KB", out, len(png)>>10)
	}
	// The pool page is wide: every column in view.
	shoot("/", `document.querySelectorAll(".tl .span-released").length > 20`, "pool", 1280, 900)
	shoot("/runs", `document.querySelectorAll("#runs tr[data-run]").length === 3`, "runs", 1400, 900)
	shoot("/runs/nightly-2026-11-25", `document.querySelectorAll("#failures tr[data-key]").length > 0 && document.getElementById("p95").innerText !== "–"`, "run", 1400, 1800)

	// A grader of its own, registered once the pool is shot, for an eval
	// with the log, metrics and output a real one leaves.
	fleet(t, b, 1, refexec.Options{Exec: docGrader}, func(int) map[string]string { return map[string]string{"grader": "math"} })
	submitRun(t, b, runRequest{Name: "math-2026-11-25", Evals: []runEval{{EvalID: "math-017", Require: map[string]string{"grader": "math"}, Spec: map[string]any{
		"dataset": "math-hard", "prompt": "Two fair dice are rolled. What is the probability that both show a six?", "max_tokens": 512, "temperature": 0,
	}}}})
	waitRun(t, b, "math-2026-11-25", 1, time.Minute)
	// Tall: the final attempt in view too.
	shoot("/evals/math-2026-11-25/math-017", `!document.getElementById("final").hidden`, "eval", 1400, 1500)
	shoot("/compare?base=nightly-2026-11-24&head=nightly-2026-11-25", `document.querySelectorAll("#chart rect.bar").length === 5`, "compare", 1400, 1300)
}

// docGrader is the grader of eval.png: it takes a second, logs to stdout
// and stderr, and fails the eval with a partial score.
const docGrader = `cat >/dev/null; echo 'loaded checkpoint step-48000'; echo 'prompt: 31 tokens'; sleep 1; echo 'generated 212 tokens in 1.0 s'; ` +
	`echo 'warning: answer parsed from the last line only' >&2; echo 'math-017: want 1/36, got 1/6' >&2; ` +
	`echo '{"status":"failed","score":0.4,"metrics":{"exact_match":0,"partial_credit":0.4,"tokens":212,"latency_s":1.02},` +
	`"output":{"answer":"1/6","expected":"1/36","steps":["P(one six) = 1/6","P(both) = 1/6"]}}'`
