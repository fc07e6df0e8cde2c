//go:build browser

package dashboard

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/evalpool/evalpool/refexec"
)

// evalGrader is a grader that fails its eval with a score, metrics and an
// output, and writes a log with markup in it to its stdout and a line to its
// stderr.
const evalGrader = `cat >/dev/null; echo 'loading 4 cases'; echo '<img src=x onerror=alert(1)>'; echo 'case 3: want 42, got 41' >&2; ` +
	`echo '{"status":"failed","score":0.25,"metrics":{"accuracy":0.25,"cases":4},"output":{"answer":"<b id=injected>41</b>","expected":"42"}}'`

// The eval page follows a running eval to its end without a reload; for a
// failed eval it shows its spec, its attempt (executor, outcome), score,
// metrics, output, stdout and stderr, all as text, and links to its run and
// its task in Asynqmon; an eval there is not shows one line that says so.
func TestEvalPageInChromium(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{}, nil)
	// The held eval's grader runs until the test lets it end, by a file.
	gate := filepath.Join(t.TempDir(), "go")
	held := fmt.Sprintf(`cat >/dev/null; while [ ! -e %s ]; do sleep 0.05; done; echo '{"status":"passed","score":1}'`, gate)
	fleet(t, b, 1, refexec.Options{Exec: held}, func(int) map[string]string { return map[string]string{"kind": "held"} })
	grader := fleet(t, b, 1, refexec.Options{Exec: evalGrader}, func(int) map[string]string { return map[string]string{"kind": "grader"} })[0]
	runWorker(t, b, 2)
	submitRun(t, b, runRequest{Name: "nightly-7", MaxRetry: new(int), Evals: []runEval{
		{EvalID: "bad", Spec: map[string]any{"question": "6*7", "expected": "42"}, Require: map[string]string{"kind": "grader"}},
		{EvalID: "slow", Spec: map[string]any{"question": "1+1"}, Require: map[string]string{"kind": "held"}},
	}})
	ctx := browser(t)

	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/evals/nightly-7/slow")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the slow eval running", `document.querySelector("#attempts .outcome")?.innerText === "running" && document.getElementById("outcome").innerText === "running"`, 10*time.Second)
	if title := evalJS[string](t, ctx, `document.getElementById("title").innerText`); title != "eval nightly-7/slow" {
		t.Errorf("title %q", title)
	}
	evalJS[bool](t, ctx, `window.notReloaded = true`)
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the slow eval's end", `document.getElementById("outcome").innerText === "passed" && !document.getElementById("final").hidden`, 20*time.Second)
	if !evalJS[bool](t, ctx, `window.notReloaded === true`) {
		t.Error("the page reloaded to show the eval's end")
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(b.url+"/evals/nightly-7/bad")); err != nil {
		t.Fatal(err)
	}
	pollTrue(t, ctx, "the failed eval", `document.getElementById("outcome").innerText === "failed" && !document.getElementById("final").hidden`, 20*time.Second)
	screenshot(t, ctx, "eval-failed")
	type view struct {
		Spec, Executor, Outcome, Attempts, Score, Accuracy, Cases, Output, Stdout, Stderr, Run, Task, Note string
		Elements                                                                                           bool
	}
	v := evalJS[view](t, ctx, `(() => {
		const txt = (sel) => document.querySelector(sel).textContent;
		return {Spec: txt("#spec"), Executor: txt("#attempts .executor"), Outcome: txt("#attempts .outcome"),
			Attempts: String(document.querySelectorAll("#attempts tr[data-attempt]").length),
			Score: txt("#score"), Accuracy: txt('#metrics tr[data-metric="accuracy"] td'), Cases: txt('#metrics tr[data-metric="cases"] td'),
			Output: txt("#output"), Stdout: txt("#stdout"), Stderr: txt("#stderr"),
			Run: document.getElementById("run-link").href, Task: document.getElementById("task-link").href,
			Note: document.body.innerText,
			Elements: document.querySelector("img, #injected, pre *") !== null};
	})()`)
	for _, c := range []struct {
		what, got, want string
	}{
		{"spec", v.Spec, `"question": "6*7"`},
		{"executor", v.Executor, grader},
		{"attempt's outcome", v.Outcome, "failed"},
		{"attempts", v.Attempts, "1"},
		{"score", v.Score, "0.25"},
		{"accuracy", v.Accuracy, "0.25"},
		{"cases", v.Cases, "4"},
		{"output", v.Output, `"answer": "<b id=injected>41</b>"`},
		{"stdout", v.Stdout, "loading 4 cases\n<img src=x onerror=alert(1)>"},
		{"stderr", v.Stderr, "case 3: want 42, got 41"},
		{"run link", v.Run, b.url + "/runs/nightly-7"},
		{"task link", v.Task, b.url + "/monitoring/queues/evals%3Aweb/tasks/nightly-7%2Fbad"},
		{"note", v.Note, "Asynq counts a graded failure as a successful task: Asynqmon shows failed evals as completed."},
	} {
		if !strings.Contains(c.got, c.want) || (c.what == "executor" || c.what == "run link" || c.what == "task link") && c.got != c.want {
			t.Errorf("%s: %q, want %q", c.what, c.got, c.want)
		}
	}
	if v.Elements {
		t.Error("the page rendered a grader's output as markup")
	}
	follow(t, ctx, "#run-link", b.url+"/runs/nightly-7")
	pollTrue(t, ctx, "the run's page", `document.getElementById("progress-text").innerText.startsWith("2 of 2 done")`, 10*time.Second)

	for _, path := range []string{"/evals/nightly-7/nope", "/evals/nope", "/evals/nightly-7/bad?pool=other"} {
		if err := chromedp.Do(ctx, chromedp.Navigate(b.url+path)); err != nil {
			t.Fatal(err)
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(path, "/evals/"), "?")
		pollTrue(t, ctx, path+" not found", fmt.Sprintf(`!document.getElementById("missing").hidden && document.getElementById("missing").innerText.startsWith(%q) && document.getElementById("eval").hidden`, "No such eval: "+id), 10*time.Second)
	}
}
