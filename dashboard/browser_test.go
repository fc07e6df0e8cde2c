//go:build browser

package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// browser starts headless Chromium for the test: Debian's chromium package,
// with the flags this sandbox needs (no sandbox as root, no background
// networking, which a closed network refuses).
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found in PATH (install it: apt-get install chromium): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 1600),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		cancelAlloc()
	})
	return ctx
}

// screenshot keeps what the browser showed, for a person to look at when
// the test fails (EVALPOOL_SCREENSHOTS=dir keeps them always).
func screenshot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("EVALPOOL_SCREENSHOTS")
	if dir == "" && !t.Failed() {
		return
	}
	if dir == "" {
		dir = t.TempDir()
	}
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		p := filepath.Join(dir, name+".png")
		_ = os.WriteFile(p, png, 0o644)
		t.Logf("screenshot: %s", p)
	}
}

func TestPoolPageInChromium(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	ctx := browser(t)
	countState := func(state string) int {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('tr[data-state="`+state+`"]').length`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(b.url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-url="http://e3:9001"]`)),
	); err != nil {
		t.Fatal(err)
	}
	if n := countState("available"); n != 3 {
		t.Fatalf("page shows %d available executors, want 3", n)
	}
	lease, err := b.pool.Acquire(t.Context(), "eval-browser", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`tr[data-state="leased"] a`))); err != nil {
		t.Fatalf("the page never showed the lease: %v", err)
	}
	link, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(`tr[data-url="`+lease.URL+`"] a`), "href"))
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "pool-page")
	if want := "monitoring/queues/" + strings.ReplaceAll(url.PathEscape(tasks.Queues(b.pool.Name()).Evals), ":", "%3A") + "/tasks/eval-browser"; link.Value != want {
		t.Fatalf("eval link = %q, want %q", link.Value, want)
	}
	if n := countState("available"); n != 2 {
		t.Fatalf("page shows %d available executors after an acquire, want 2", n)
	}
	// A waiting eval is shown in line, apart from the running ones.
	for _, id := range []string{"eval-2", "eval-3"} {
		if _, err := b.pool.Acquire(t.Context(), id, time.Minute, pool.AcquireArgs{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.pool.Acquire(t.Context(), "eval-waiting", time.Minute, pool.AcquireArgs{Wait: pool.Wait{Wake: b.pool.WakeKey("browser"), PlaceTTL: time.Minute}}); !errors.Is(err, pool.ErrWaiting) {
		t.Fatalf("Acquire with a wait on a busy pool: %v", err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`tr[data-eval="eval-waiting"]`))); err != nil {
		t.Fatalf("the page never showed the waiting eval: %v", err)
	}
	screenshot(t, ctx, "pool-page-waiting")
}

func TestAsynqmonInChromium(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	aq := asynq.NewClientFromRedisClient(b.client)
	eval, err := tasks.NewEval(tasks.Eval{ID: "e1", Spec: json.RawMessage(`{}`)}, tasks.EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cleanup, err := tasks.NewCleanup(tasks.TypeCleanupSuccess, tasks.Cleanup{EvalID: "e1", URL: "http://e1:9001", Token: "t", Path: tasks.PathSuccess})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range []*asynq.Task{eval, cleanup} {
		if _, err := aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/monitoring/")); err != nil {
		t.Fatal(err)
	}
	shown, err := chromedp.Run(ctx, chromedp.Poll[bool](`(() => {
			const names = [...document.querySelectorAll("tbody tr")].map(r => r.cells[0].innerText.trim());
			return names.includes("evals") && names.includes("cleanup");
		})()`, chromedp.WithPollingTimeout(30*time.Second)))
	screenshot(t, ctx, "asynqmon")
	if err != nil || !shown {
		t.Fatalf("Asynqmon's queues view never listed the evals and cleanup queues: %v", err)
	}
}

// The page shows the fleet's health: each executor's labels, its calls in
// a row that found it unavailable, its pass rate, and its quarantine (why,
// since when, the next probe, the failed probes), for an idle executor and
// for one still serving its eval alike; and it shows the API's strings as
// text, never as markup.
func TestPoolHealthInChromium(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	ctx := t.Context()
	p := b.pool
	const (
		gpu1   = "http://gpu1:9001"
		gpu2   = "http://gpu2:9001"
		markup = `<img id="injected" src="x" onerror="document.body.dataset.injected=1">`
	)
	if _, err := p.Register(ctx,
		pool.Executor{URL: gpu1, Labels: map[string]string{"gpu": "a100", "zone": "eu-1"}},
		pool.Executor{URL: gpu2, Labels: map[string]string{"gpu": "h100"}},
	); err != nil {
		t.Fatal(err)
	}
	if out, err := p.Quarantine(ctx, gpu1, pool.ReasonOperator); err != nil || out != pool.Quarantined {
		t.Fatalf("Quarantine(%s) = %s, %v", gpu1, out, err)
	}
	// gpu2 grades two evals passed and one failed, then fails a call.
	for i, v := range []pool.Verdict{pool.VerdictPassed, pool.VerdictPassed, pool.VerdictFailed, pool.VerdictUnavailable} {
		l, err := p.Acquire(ctx, fmt.Sprintf("graded-%d", i), time.Minute, pool.AcquireArgs{Require: map[string]string{"gpu": "h100"}})
		if err != nil || l.URL != gpu2 {
			t.Fatalf("acquire on gpu=h100: %s, %v", l.URL, err)
		}
		if _, err := p.Release(ctx, l, pool.ReleaseArgs{Path: "test", Verdict: v}); err != nil {
			t.Fatal(err)
		}
	}
	// Quarantined while leased: it serves its eval, then goes out of service.
	if l, err := p.Acquire(ctx, "eval-serving", time.Minute, pool.AcquireArgs{Require: map[string]string{"gpu": "h100"}}); err != nil || l.URL != gpu2 {
		t.Fatalf("acquire on gpu=h100: %s, %v", l.URL, err)
	}
	if out, err := p.Quarantine(ctx, gpu2, pool.ReasonOperator); err != nil || out != pool.Quarantined {
		t.Fatalf("Quarantine(%s) while leased = %s, %v", gpu2, out, err)
	}
	// A reason is free text: the page must show it as text.
	if _, err := p.Quarantine(ctx, "http://e3:9001", markup); err != nil {
		t.Fatal(err)
	}

	bctx := browser(t)
	if err := chromedp.Do(bctx,
		chromedp.Navigate(b.url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-url="`+gpu2+`"]`)),
	); err != nil {
		t.Fatal(err)
	}
	screenshot(t, bctx, "pool-health")
	type row struct {
		State, Text, Labels, Fails, PassRate, Quarantine, Badge string
		Badges                                                  []string
	}
	rows, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]row](`(() => {
		const rows = {};
		for (const tr of document.querySelectorAll("#executors tr")) {
			const q = tr.querySelector(".state.quarantined");
			rows[tr.dataset.url] = {
				State: tr.dataset.state,
				Text: tr.innerText,
				Labels: tr.querySelector("td.labels").innerText.trim(),
				Fails: tr.querySelector("td.fails").innerText.trim(),
				PassRate: tr.querySelector("td.pass-rate").innerText.trim(),
				Quarantine: tr.querySelector("td.quarantine").innerText.trim(),
				Badge: q ? getComputedStyle(q).backgroundColor : "",
				Badges: [...tr.querySelectorAll(".state")].map((s) => s.innerText.trim()),
			};
		}
		return rows;
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	summary, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("#summary")))
	if err != nil {
		t.Fatal(err)
	}
	check := func(url, what, got string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %s = %q, want it to contain %q", url, what, got, w)
			}
		}
	}

	q := rows[gpu1]
	if q.State != "quarantined" || !slices.Equal(q.Badges, []string{"quarantined"}) {
		t.Errorf("%s: state %q, badges %q, want quarantined", gpu1, q.State, q.Badges)
	}
	if q.Badge == "" || q.Badge == "rgba(0, 0, 0, 0)" {
		t.Errorf("%s: the quarantined badge has no background (%q)", gpu1, q.Badge)
	}
	check(gpu1, "labels", q.Labels, "gpu=a100", "zone=eu-1")
	check(gpu1, "quarantine", q.Quarantine, "operator", "ago", "next probe in", "0 failed probes")
	check(gpu1, "pass rate", q.PassRate, "–")

	g := rows[gpu2]
	if g.State != "leased" || !slices.Equal(g.Badges, []string{"leased", "quarantined"}) {
		t.Errorf("%s: state %q, badges %q, want leased and quarantined", gpu2, g.State, g.Badges)
	}
	check(gpu2, "quarantine", g.Quarantine, "operator", "out of service at release")
	check(gpu2, "row", g.Text, "eval-serving")
	check(gpu2, "labels", g.Labels, "gpu=h100")
	check(gpu2, "pass rate", g.PassRate, "67% of 3")
	if g.Fails != "1" {
		t.Errorf("%s: fails = %q, want 1", gpu2, g.Fails)
	}

	e1 := rows["http://e1:9001"]
	if e1.Labels != "–" || e1.PassRate != "–" || e1.Quarantine != "–" || e1.Fails != "0" || e1.State != "available" {
		t.Errorf("http://e1:9001: %+v, want available with no labels, no grades, no fails, no quarantine", e1)
	}

	e3 := rows["http://e3:9001"]
	check("http://e3:9001", "quarantine", e3.Quarantine, markup)
	injected, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.getElementById("injected") !== null || "injected" in document.body.dataset`))
	if err != nil || injected {
		t.Errorf("the page rendered a quarantine reason as markup: %v, %v", injected, err)
	}

	check("summary", "text", summary, "5 executors", "2 quarantined", "+1 leased, out of service at release")
}

// A browser that is not logged in is sent to the login page: a scripted
// `chromium --headless --screenshot` (or --dump-dom) of a page behind the
// token ends, on the login form, instead of stalling on a 401.
func TestProtectedPageLeadsToLoginInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupWith(t, Options{AuthToken: testToken})
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found in PATH: %v", err)
	}
	dir := t.TempDir()
	headless := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, path, append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1280,800"}, args...)...)
		out, err := cmd.Output()
		if ctx.Err() != nil {
			t.Fatalf("chromium %v did not end within 30 s", args)
		}
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}
	dom := headless("--dump-dom", b.url+"/runs/nightly")
	if !strings.Contains(string(dom), `name="token"`) || !strings.Contains(string(dom), `value="/runs/nightly"`) {
		t.Fatalf("the page a browser lands on is not the login form for /runs/nightly: %.400s", dom)
	}
	shot := filepath.Join(dir, "shot.png")
	headless("--screenshot="+shot, b.url+"/")
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot: %v", err)
	}
}

// The pool table fits 1,280 px with the columns that matter first (the
// rest on demand), and with --admin and a token a logged-in operator
// quarantines, returns and drains an executor from it; without --admin the
// page offers no action.
func TestPoolActionsInChromium(t *testing.T) {
	t.Parallel()
	for _, admin := range []bool{true, false} {
		t.Run(fmt.Sprint("admin ", admin), func(t *testing.T) {
			t.Parallel()
			_, b := setupWith(t, Options{Admin: admin, AuthToken: testToken})
			// A fleet's names and labels are longer than the tests' e1.
			if _, err := b.pool.Register(t.Context(), pool.Executor{URL: "http://sandbox-eu-west-1a-0042.evals.internal.example:9001",
				Labels: map[string]string{"gpu": "a100", "zone": "eu-west-1a", "image": "python-3.12"}}); err != nil {
				t.Fatal(err)
			}
			ctx := browser(t)
			if err := chromedp.Do(ctx,
				chromedp.Navigate(b.url+"/"),
				chromedp.WaitVisible(chromedp.CSS(`input[name="token"]`)),
				chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), testToken),
				chromedp.Submit(chromedp.CSS(`input[name="token"]`)),
				chromedp.WaitVisible(chromedp.CSS(`tr[data-url="http://e1:9001"]`)),
			); err != nil {
				t.Fatal(err)
			}
			pollTrue(t, ctx, "the table fits 1,280 px, pass rate and quarantine in view", `(() => {
				const wide = document.querySelector(".wide"), last = [...wide.querySelectorAll("th")].filter((th) => th.offsetParent !== null).pop();
				return window.innerWidth <= 1280 && wide.scrollWidth <= wide.clientWidth && last.getBoundingClientRect().right <= window.innerWidth;
			})()`, 10*time.Second)
			if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#all-columns"))); err != nil {
				t.Fatal(err)
			}
			pollTrue(t, ctx, "all columns shown on demand", `[...document.querySelectorAll("#executors-table th")].some((th) => th.innerText === "Fence" && th.offsetParent !== null)`, 5*time.Second)
			actions := evalJS[int](t, ctx, `[...document.querySelectorAll("td.actions button")].filter((b) => b.offsetParent !== null).length`)
			if !admin {
				if actions != 0 {
					t.Fatalf("without --admin the page offers %d actions", actions)
				}
				return
			}
			row := `tr[data-url="http://e1:9001"]`
			crossSiteActions(t, ctx, b.url)
			if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row+` button[data-action="quarantine"]`))); err != nil {
				t.Fatal(err)
			}
			pollTrue(t, ctx, "e1 quarantined", `document.querySelector('`+row+`[data-quarantined="true"]') !== null`, 10*time.Second)
			if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row+` button[data-action="return"]`))); err != nil {
				t.Fatal(err)
			}
			pollTrue(t, ctx, "e1 back in service", `(() => { const tr = document.querySelector('`+row+`'); return tr !== null && tr.dataset.quarantined === undefined; })()`, 10*time.Second)
			screenshot(t, ctx, "pool-actions")
			if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`tr[data-url="http://e2:9001"] button[data-action="remove"]`))); err != nil {
				t.Fatal(err)
			}
			pollTrue(t, ctx, "e2 removed", `document.querySelector('tr[data-url="http://e2:9001"]') === null`, 10*time.Second)
		})
	}
}

// crossSiteActions opens, in the logged-in browser, a page of another
// port of the same host (same site: the login cookie goes with its
// requests) that asks the dashboard at dash to quarantine e1 every way a
// page can without the dashboard's consent: a no-cors POST of the JSON as
// text/plain, one that names application/json (which no-cors drops), and
// a CORS one (whose preflight the dashboard does not answer). The requests
// reach the dashboard, and e1 stays in service.
func crossSiteActions(t *testing.T, ctx context.Context, dash string) {
	t.Helper()
	attack := fmt.Sprintf(`<!doctype html><script>
const body = JSON.stringify({url: "http://e1:9001", action: "quarantine"});
const to = %q + "/api/pool/action";
window.reached = 0;
Promise.allSettled([
  fetch(to, {method: "POST", mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"}, body}),
  fetch(to, {method: "POST", mode: "no-cors", credentials: "include", headers: {"Content-Type": "application/json"}, body}),
  fetch(to, {method: "POST", mode: "cors", credentials: "include", headers: {"Content-Type": "application/json"}, body}),
]).then((rs) => { window.reached = rs.filter((r) => r.status === "fulfilled").length; window.done = true; });
</script>`, dash)
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, attack)
	}))
	t.Cleanup(attacker.Close)
	if err := chromedp.Do(ctx, chromedp.Navigate(attacker.URL)); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the attacking page's requests settled", `window.done === true`, 10*time.Second)
	if n := evalJS[int](t, ctx, `window.reached`); n != 2 {
		t.Errorf("%d of the no-cors requests reached the dashboard, want 2: the test would not attack", n)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(dash+"/"), chromedp.WaitVisible(chromedp.CSS(`tr[data-url="http://e1:9001"]`))); err != nil {
		t.Fatal(err)
	}
	if evalJS[bool](t, ctx, `document.querySelector('tr[data-url="http://e1:9001"]').dataset.quarantined !== undefined`) {
		t.Fatal("a page of another port quarantined e1 through the logged-in browser")
	}
}
