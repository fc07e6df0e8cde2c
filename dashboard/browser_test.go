//go:build browser

package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
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
	lease, err := b.pool.Acquire(t.Context(), "eval-browser", time.Minute)
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
		if _, err := b.pool.Acquire(t.Context(), id, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.pool.AcquireOrWait(t.Context(), "eval-waiting", time.Minute, pool.Wait{Wake: b.pool.WakeKey("browser"), For: time.Minute}); !errors.Is(err, pool.ErrWaiting) {
		t.Fatalf("AcquireOrWait on a busy pool: %v", err)
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
