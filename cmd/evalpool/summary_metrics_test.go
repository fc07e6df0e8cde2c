package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	evalrun "github.com/evalpool/evalpool/run"
)

// recordRun records a run of epochs with meta, its keys KEY#1 … of keys,
// and the ends recs (Key the suite's key, Epoch the repeat).
func recordRun(t *testing.T, store *evalrun.Store, name string, epochs int, meta map[string]string, keys []string, recs ...evalrun.Record) {
	t.Helper()
	var ks []string
	for _, k := range keys {
		for e := range epochs {
			ks = append(ks, evalrun.EpochKey(k, e+1))
		}
	}
	r := evalrun.Run{Name: name, Pool: "default", CreatedAt: time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC), Keys: ks, Meta: meta, Epochs: epochs}
	if err := store.Create(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if err := store.Submitted(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		rec.Key = evalrun.EpochKey(rec.Key, rec.Epoch)
		if _, err := store.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSummaryPrintsMetrics: run summary prints the run's meta, pass@1 and
// pass@k, the score and each metric with its standard error, a table of
// the groups, and against another run the deltas of the pass rate, the
// metrics and the groups; --json has each failure's reason.
func TestSummaryPrintsMetrics(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	store := evalrun.NewStore(srv.Client(t), evalrun.Options{})
	P, F, E, C := evalrun.Passed, evalrun.Failed, evalrun.Errored, evalrun.Cancelled
	acc := func(v float64) map[string]float64 { return map[string]float64{"accuracy": v} }
	keys := []string{"a", "b", "c", "d"}
	recordRun(t, store, "before", 2, map[string]string{"model": "m0"}, keys,
		evalrun.Record{Key: "a", Epoch: 1, Group: "math", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "a", Epoch: 2, Group: "math", Status: F, Score: score(0), Metrics: acc(0)},
		evalrun.Record{Key: "b", Epoch: 1, Group: "math", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "b", Epoch: 2, Group: "math", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "c", Epoch: 1, Group: "code", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "c", Epoch: 2, Group: "code", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "d", Epoch: 1, Status: P, Score: score(1)},
		evalrun.Record{Key: "d", Epoch: 2, Status: P, Score: score(1)})
	recordRun(t, store, "after", 2, map[string]string{"model": "m1", "commit": "abc", "note": "two words"}, keys,
		evalrun.Record{Key: "a", Epoch: 1, Group: "math", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "a", Epoch: 2, Group: "math", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "b", Epoch: 1, Group: "math", Status: F, Score: score(0), Metrics: acc(0), Error: "wrong answer"},
		evalrun.Record{Key: "b", Epoch: 2, Group: "math", Status: P, Score: score(1), Metrics: acc(1)},
		evalrun.Record{Key: "c", Epoch: 1, Group: "code", Status: F, Score: score(0.5), Metrics: acc(0.5), Error: "half right"},
		evalrun.Record{Key: "c", Epoch: 2, Group: "code", Status: C},
		evalrun.Record{Key: "d", Epoch: 1, Status: E, Error: "executor: unavailable"})

	r := runCLI(t, srv.URL(), "default", "run", "summary", "after", "--compare", "before")
	if r.code != 0 {
		t.Fatalf("run summary: %+v", r)
	}
	// Samples a 2/2, b 1/2, c 0/1 (one cancelled), d 0/1 (one pending):
	// pass@1 (1 + 1/2 + 0 + 0)/4; pass@2 over a and b, both passed once.
	// Scores by sample 1, 1/2, 1/2: mean 2/3, stderr √((1/9+1/36+1/36)/2/3).
	want := `run after (pool default, 8 evals, submitted 2026-12-07T06:00:00Z)
  meta commit=abc model=m1 note="two words"
  passed 3, failed 2, errored 1, cancelled 1, running 0, pending 1
  pass rate 50.0%
  pass@1 37.5%, pass@2 100.0% (2 epochs)
  score mean 0.667 ± 0.167 (n=3), median 1.000
  accuracy 0.667 ± 0.167 (n=3)
  duration p50 0.000s, p95 0.000s; 0 retries
  2 groups:
    group  passed/failed/errored  pass rate  score mean
    code   0/1/0                  0.0%       0.500
    math   3/1/0                  75.0%      0.750
  failed b#1 wrong answer
  failed c#1 half right
  errored d#1 executor: unavailable
  against before: 3 newly failing, 1 newly passing
    pass rate 87.5% → 50.0% (-37.5 pp)
    accuracy 0.833 → 0.667 (-0.167)
    group code: pass rate 100.0% → 0.0% (-100.0 pp)
    group math: pass rate 75.0% → 75.0% (+0.0 pp)
    newly failing b#1
    newly failing c#1
    newly failing d#1
    newly passing a#2
`
	if r.stdout != want {
		t.Errorf("run summary printed:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = runCLI(t, srv.URL(), "default", "run", "summary", "after", "--json")
	var sum struct {
		Failures []map[string]any `json:"failures"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil || r.code != 0 {
		t.Fatalf("run summary --json: %v, %+v", err, r)
	}
	for i, want := range []string{"wrong answer", "half right", "executor: unavailable"} {
		if f := sum.Failures[i]; f["reason"] != want || f["error"] != want || f["key"] == nil {
			t.Errorf("failure %d: %v, want reason %q beside its record", i, f, want)
		}
	}
}

// TestSummaryBoundsGroups: a run of many groups prints the first 50 and
// says how many more --json has.
func TestSummaryBoundsGroups(t *testing.T) {
	t.Parallel()
	var s evalrun.Summary
	for i := range 75 {
		s.Groups = append(s.Groups, evalrun.GroupSummary{Group: strings.Repeat("g", i+1), PassRate: -1})
	}
	var b strings.Builder
	printSummary(&b, s)
	out := b.String()
	if !strings.Contains(out, "  75 groups:\n") || !strings.Contains(out, "    "+strings.Repeat("g", 50)+"  ") || strings.Contains(out, strings.Repeat("g", 51)) ||
		!strings.Contains(out, "    … and 25 more groups (run summary --json)\n") {
		t.Errorf("printed:\n%s", out)
	}
}

func score(v float64) *float64 { return &v }

// A run with nothing graded (every eval cancelled) passes no gate that
// asks for a pass rate, in the CLI and in the Python client; without one
// it is no failure.
func TestNothingGradedPassesNoGate(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	if r := cli("run", "submit", "--allow-empty-pool", "--name", "void", "--file", writeSuite(t, `{}`, `{}`)); r.code != 0 {
		t.Fatalf("run submit: %+v", r)
	}
	if r := cli("run", "cancel", "void"); r.code != 0 {
		t.Fatalf("run cancel: %+v", r)
	}
	const want = "evals failed: run void has no graded eval (2 cancelled, 0 not ended), so nothing to pass 100.0% of"
	if r := cli("run", "summary", "void", "--min-pass-rate", "1"); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("run summary --min-pass-rate 1: %+v; want exit 1 and %q", r, want)
	}
	if r := cli("run", "summary", "void"); r.code != 0 {
		t.Errorf("run summary, no gate: %+v; want exit 0", r)
	}
	summary := cli("run", "summary", "void", "--json").stdout
	if r := pyEval(t, lookPython3(t), "sys.exit(c.gate(json.load(sys.stdin), 1.0))", summary); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("the Python client's gate: %+v; want exit 1 and %q", r, want)
	}
}
