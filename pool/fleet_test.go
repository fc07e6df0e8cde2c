package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// release with a verdict, asserting the lease ended.
func releaseWith(t *testing.T, p *Pool, l Lease, v Verdict) ReleaseResult {
	t.Helper()
	r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "test", Verdict: v, Retrying: true})
	if err != nil || r.Outcome != Released {
		t.Fatalf("release %s with %s: %+v, %v", l.URL, v, r, err)
	}
	return r
}

func statusOf(t *testing.T, p *Pool, url string) ExecutorStatus {
	t.Helper()
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Executors {
		if e.URL == url {
			return e
		}
	}
	t.Fatalf("%s not in the pool", url)
	return ExecutorStatus{}
}

// waitDue waits until Redis's clock, the one the probe script reads, has
// reached the next probe of every url: a probe run then finds them due.
func waitDue(t *testing.T, p *Pool, urls ...string) {
	t.Helper()
	evaltest.Eventually(t, 5*time.Second, "the probes never came due", func() bool {
		st, err := p.Status(t.Context())
		if err != nil {
			return false
		}
		due := 0
		for _, e := range st.Executors {
			if slices.Contains(urls, e.URL) && e.Quarantine != nil && !st.Now.Before(e.Quarantine.NextProbe) {
				due++
			}
		}
		return due == len(urls)
	})
}

func assertClean(t *testing.T, p *Pool) {
	t.Helper()
	vs, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("violation: %s", v)
	}
}

// TestFailureCounter: what counts toward quarantine and what resets it.
func TestFailureCounter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		verdicts []Verdict
		wantOut  bool // quarantined after the last
		fails    int64
	}{
		{"three unavailable in a row", []Verdict{VerdictUnavailable, VerdictUnavailable, VerdictUnavailable}, true, 3},
		{"two are not enough", []Verdict{VerdictUnavailable, VerdictUnavailable}, false, 2},
		{"a graded failure resets the count", []Verdict{VerdictUnavailable, VerdictUnavailable, VerdictFailed, VerdictUnavailable, VerdictUnavailable}, false, 2},
		{"a pass resets the count", []Verdict{VerdictUnavailable, VerdictUnavailable, VerdictPassed, VerdictUnavailable}, false, 1},
		{"no verdict neither counts nor resets", []Verdict{VerdictUnavailable, VerdictNone, VerdictUnavailable, VerdictNone, VerdictUnavailable}, true, 3},
		{"graded failures never quarantine by default", []Verdict{VerdictFailed, VerdictFailed, VerdictFailed, VerdictFailed}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			var last ReleaseResult
			for i, v := range tt.verdicts {
				last = releaseWith(t, p, acquire(t, p, fmt.Sprintf("eval-%d", i), time.Minute), v)
			}
			e := statusOf(t, p, "http://e1")
			if (e.Quarantine != nil) != tt.wantOut || (last.Quarantined != "") != tt.wantOut {
				t.Fatalf("quarantine = %+v, last release said %q; want quarantined=%v", e.Quarantine, last.Quarantined, tt.wantOut)
			}
			if tt.wantOut && (e.State != StateQuarantined || e.Quarantine.Reason != ReasonUnavailable || b.metrics.Quarantines(ReasonUnavailable) != 1) {
				t.Fatalf("state %s reason %+v metrics %v", e.State, e.Quarantine, b.metrics.Quarantines(""))
			}
			if !tt.wantOut && e.Fails != tt.fails {
				t.Fatalf("fails = %d, want %d", e.Fails, tt.fails)
			}
			if tt.wantOut && b.logs.Count("executor quarantined") != 1 {
				t.Fatal("no warn line when the quarantine started")
			}
			assertClean(t, p)
		})
	}
}

// TestQuarantinedIsNeverHandedOut: a quarantined executor is out of every
// index, so acquires get the others and then wait; a probe that answers
// returns it, straight to the waiter.
func TestQuarantinedIsNeverHandedOut(t *testing.T) {
	t.Parallel()
	p, _ := setupWith(t, Settings{LeaseGrace: testGrace, ProbeInterval: time.Millisecond}, "http://e1", "http://e2")
	if out, err := p.Quarantine(t.Context(), "http://e1", ReasonUnavailable); err != nil || out != Quarantined {
		t.Fatalf("quarantine: %s, %v", out, err)
	}
	if out, err := p.Quarantine(t.Context(), "http://e1", ReasonUnavailable); err != nil || out != AlreadyQuarantined {
		t.Fatalf("quarantine again: %s, %v", out, err)
	}
	for i := range 20 {
		l := acquire(t, p, fmt.Sprintf("eval-%d", i), time.Minute)
		if l.URL != "http://e2" {
			t.Fatalf("acquire %d got quarantined %s", i, l.URL)
		}
		release(t, p, l, Released)
	}
	hold := acquire(t, p, "hold", time.Minute)
	if _, err := p.Acquire(t.Context(), "none-left", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("acquire with only a quarantined executor left: %v", err)
	}
	c, err := p.Counts(t.Context())
	if err != nil || c.Quarantined != 1 || c.Leased != 1 || c.Available != 0 || c.Registered != 2 || c.Lost != 0 {
		t.Fatalf("counts %+v, %v", c, err)
	}
	unhealthy := func(context.Context, string) error { return errors.New("connection refused") }
	waitDue(t, p, "http://e1")
	if back, err := p.ProbeQuarantined(t.Context(), 10, unhealthy); err != nil || len(back) != 0 {
		t.Fatalf("an unhealthy probe returned %v, %v", back, err)
	}
	if e := statusOf(t, p, "http://e1"); e.Quarantine == nil || e.Quarantine.Probes != 1 {
		t.Fatalf("after one failed probe: %+v", e.Quarantine)
	}
	waitDue(t, p, "http://e1")
	if back, err := p.ProbeQuarantined(t.Context(), 10, func(context.Context, string) error { return nil }); err != nil || len(back) != 1 {
		t.Fatalf("a healthy probe returned %v, %v", back, err)
	}
	release(t, p, hold, Released)
	assertWhole(t, p, "http://e1", "http://e2")
}

// TestProbeBackoffAndClaims: of many workers probing at once, one probes
// each due executor; the next probe waits a backoff that doubles.
func TestProbeBackoffAndClaims(t *testing.T) {
	t.Parallel()
	p, _ := setupWith(t, Settings{LeaseGrace: testGrace, ProbeInterval: 200 * time.Millisecond, ProbeMaxInterval: time.Second}, "http://e1")
	if _, err := p.Quarantine(t.Context(), "http://e1", ReasonUnavailable); err != nil {
		t.Fatal(err)
	}
	var probes atomic.Int64
	unhealthy := func(context.Context, string) error { probes.Add(1); return errors.New("down") }
	if _, err := p.ProbeQuarantined(t.Context(), 10, unhealthy); err != nil || probes.Load() != 0 {
		t.Fatalf("probed before the interval: %d, %v", probes.Load(), err)
	}
	waitDue(t, p, "http://e1")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := p.ProbeQuarantined(t.Context(), 10, unhealthy); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if probes.Load() != 1 {
		t.Fatalf("8 concurrent probers probed %d times, want 1", probes.Load())
	}
	next := statusOf(t, p, "http://e1").Quarantine.NextProbe
	st, _ := p.Status(t.Context())
	if d := next.Sub(st.Now); d < 250*time.Millisecond || d > 400*time.Millisecond {
		t.Fatalf("next probe in %s, want the doubled backoff, 400ms", d)
	}
}

// TestProbeRacesRelease: a probe claimed before the executor was returned,
// leased and quarantined again must not return it when it answers late.
func TestProbeRacesRelease(t *testing.T) {
	t.Parallel()
	p, _ := setupWith(t, Settings{LeaseGrace: testGrace, ProbeInterval: time.Millisecond, QuarantineAfter: 1}, "http://e1")
	if _, err := p.Quarantine(t.Context(), "http://e1", ReasonUnavailable); err != nil {
		t.Fatal(err)
	}
	waitDue(t, p, "http://e1")
	returned, err := p.ProbeQuarantined(t.Context(), 10, func(ctx context.Context, url string) error {
		// While this probe runs: an operator returns it, an eval leases it
		// and finds it dead, which quarantines it again.
		if _, err := p.ReturnToService(ctx, url); err != nil {
			return err
		}
		l, err := p.Acquire(ctx, "racer", time.Minute, AcquireArgs{})
		if err != nil {
			return err
		}
		r, err := p.Release(ctx, l, ReleaseArgs{Path: "test", Verdict: VerdictUnavailable})
		if err != nil || r.Quarantined == "" {
			return fmt.Errorf("release did not quarantine: %+v %v", r, err)
		}
		return nil // the stale probe says healthy
	})
	if err != nil || len(returned) != 0 {
		t.Fatalf("a stale probe returned %v (%v): it must not undo the newer quarantine", returned, err)
	}
	if e := statusOf(t, p, "http://e1"); e.State != StateQuarantined {
		t.Fatalf("state %s, want quarantined", e.State)
	}
	assertClean(t, p)
}

// TestOperatorQuarantineHolds: probes return only executors quarantined
// for being unavailable; an operator's quarantine, or one for a failing
// sandbox (whose /healthz may well answer), holds until an operator ends it.
func TestOperatorQuarantineHolds(t *testing.T) {
	t.Parallel()
	p, _ := setupWith(t, Settings{LeaseGrace: testGrace, ProbeInterval: time.Millisecond, ProbeMaxInterval: time.Millisecond}, "http://e1", "http://e2")
	for url, reason := range map[string]string{"http://e1": ReasonOperator, "http://e2": ReasonFailRate} {
		if _, err := p.Quarantine(t.Context(), url, reason); err != nil {
			t.Fatal(err)
		}
	}
	var probed atomic.Int64
	for range 3 {
		waitDue(t, p, "http://e1", "http://e2")
		back, err := p.ProbeQuarantined(t.Context(), 10, func(context.Context, string) error { probed.Add(1); return nil })
		if err != nil || len(back) != 0 {
			t.Fatalf("probes returned %v, %v", back, err)
		}
	}
	if probed.Load() != 0 {
		t.Fatalf("probed %d times", probed.Load())
	}
	st, _ := p.Status(t.Context())
	if st.Counts[StateQuarantined] != 2 {
		t.Fatalf("counts %v", st.Counts)
	}
}

// TestQuarantineWhileLeased: an operator's quarantine of a leased executor
// lets its eval finish and takes it out at the release; re-entry is refused.
func TestQuarantineWhileLeased(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1")
	l := acquire(t, p, "eval-a", time.Minute)
	if out, err := p.Quarantine(t.Context(), l.URL, ReasonOperator); err != nil || out != Quarantined {
		t.Fatalf("%s %v", out, err)
	}
	if _, err := p.Renew(t.Context(), l, time.Minute); err != nil {
		t.Fatalf("the eval lost its lease to the quarantine: %v", err)
	}
	if _, err := p.Acquire(t.Context(), "eval-a", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("re-entry into a quarantined executor: %v", err)
	}
	if e := statusOf(t, p, l.URL); e.State != StateQuarantined {
		t.Fatalf("state %s after its lease ended, want quarantined", e.State)
	}
	if out, err := p.ReturnToService(t.Context(), l.URL); err != nil || out != Returned {
		t.Fatalf("%s %v", out, err)
	}
	assertWhole(t, p, "http://e1")
}

// TestAvoidTheExecutorThatFailed: a retried attempt prefers another free
// executor over the one its last attempt found unavailable, or errored on.
func TestAvoidTheExecutorThatFailed(t *testing.T) {
	t.Parallel()
	for _, v := range []Verdict{VerdictUnavailable, VerdictErrored} {
		t.Run(string(v), func(t *testing.T) {
			t.Parallel()
			p, _ := setup(t, "http://e1", "http://e2")
			l := acquire(t, p, "eval-a", time.Minute)
			failed := l.URL
			releaseWith(t, p, l, v)
			// failed is now idle longest... no: it was released last. Make it
			// the head: lease and release the other one.
			o := acquire(t, p, "eval-b", time.Minute)
			release(t, p, o, Released)
			again := acquire(t, p, "eval-a", time.Minute)
			if again.URL == failed {
				t.Fatalf("the retry got %s again, with %s free", failed, o.URL)
			}
			release(t, p, again, Released)
			// Alone in the pool, it is given anyway.
			q, _ := setup(t, "http://solo")
			l = acquire(t, q, "eval-c", time.Minute)
			releaseWith(t, q, l, v)
			if again := acquire(t, q, "eval-c", time.Minute); again.URL != "http://solo" {
				t.Fatalf("got %s", again.URL)
			}
			assertClean(t, p)
		})
	}
}

// TestErroredEvalsAreNotTheExecutors: an errored eval is served, so it
// ends a streak of unavailable calls and never quarantines, and it counts
// in no pass rate.
func TestErroredEvalsAreNotTheExecutors(t *testing.T) {
	t.Parallel()
	p, _ := setupWith(t, Settings{LeaseGrace: testGrace, QuarantineAfter: 2, QuarantineFailRate: 0.5}, "http://e1")
	for i, v := range []Verdict{VerdictUnavailable, VerdictErrored, VerdictUnavailable, VerdictErrored} {
		if r := releaseWith(t, p, acquire(t, p, fmt.Sprintf("e%d", i), time.Minute), v); r.Quarantined != "" {
			t.Fatalf("release %d (%s) quarantined it: %s", i, v, r.Quarantined)
		}
	}
	for i := range 30 {
		releaseWith(t, p, acquire(t, p, fmt.Sprintf("x%d", i), time.Minute), VerdictErrored)
	}
	if e := statusOf(t, p, "http://e1"); e.Fails != 0 || e.Quarantine != nil || e.Passed+e.Failed != 0 {
		t.Fatalf("%+v: want no streak, no quarantine, no grade", e)
	}
}

// TestFailRateQuarantine: opt-in; a sandbox that fails every eval is taken
// out, and never without the option.
func TestFailRateQuarantine(t *testing.T) {
	t.Parallel()
	for _, rate := range []float64{0, 0.9} {
		p, _ := setupWith(t, Settings{LeaseGrace: testGrace, QuarantineFailRate: rate}, "http://e1")
		var r ReleaseResult
		for i := range 20 {
			r = releaseWith(t, p, acquire(t, p, fmt.Sprintf("e%d", i), time.Minute), VerdictFailed)
		}
		if got := r.Quarantined == ReasonFailRate; got != (rate > 0) {
			t.Fatalf("rate %g: 20 failed evals quarantined=%v", rate, got)
		}
		if e := statusOf(t, p, "http://e1"); e.Failed != 20 || e.PassRate() != 0 {
			t.Fatalf("failed %d pass rate %g", e.Failed, e.PassRate())
		}
	}
}

// setupLabeled is a pool of three executors of three label sets.
func setupLabeled(t *testing.T) (*Pool, *testBundle) {
	t.Helper()
	p, b := setup(t)
	if _, err := p.Register(t.Context(),
		Executor{URL: "http://a100", Labels: map[string]string{"gpu": "a100"}},
		Executor{URL: "http://h100", Labels: map[string]string{"gpu": "h100", "region": "eu"}},
		Executor{URL: "http://cpu"},
	); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func TestLabelRouting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		require map[string]string
		want    string // "" for ErrUnservable
	}{
		{map[string]string{"gpu": "a100"}, "http://a100"},
		{map[string]string{"region": "eu"}, "http://h100"},
		{map[string]string{"gpu": "h100", "region": "eu"}, "http://h100"},
		{map[string]string{"gpu": "a100", "region": "eu"}, ""},
		{map[string]string{"gpu": "tpu"}, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.require), func(t *testing.T) {
			t.Parallel()
			p, _ := setupLabeled(t)
			ok, err := p.CanServe(t.Context(), tt.require)
			if err != nil || ok != (tt.want != "") {
				t.Fatalf("CanServe = %v, %v", ok, err)
			}
			for i := range 3 { // every time, not by luck of the order
				l, err := p.Acquire(t.Context(), fmt.Sprintf("e%d", i), time.Minute, AcquireArgs{Require: tt.require})
				if tt.want == "" {
					if !errors.Is(err, ErrUnservable) {
						t.Fatalf("acquire: %v, want ErrUnservable", err)
					}
					return
				}
				if err != nil || l.URL != tt.want {
					t.Fatalf("acquire %d: %s, %v; want %s", i, l.URL, err, tt.want)
				}
				release(t, p, l, Released)
			}
			assertClean(t, p)
		})
	}
}

// TestAnyEvalTakesLabeledExecutors: an eval that requires nothing gets the
// executor idle longest, labeled or not, and takes it out of its label
// sets' indexes too.
func TestAnyEvalTakesLabeledExecutors(t *testing.T) {
	t.Parallel()
	p, _ := setupLabeled(t)
	var held []Lease
	for i := range 3 {
		held = append(held, acquire(t, p, fmt.Sprintf("e%d", i), time.Minute))
	}
	assertClean(t, p)
	if _, err := p.Acquire(t.Context(), "gpu", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}}); !errors.Is(err, ErrNoExecutor) || errors.Is(err, ErrUnservable) {
		t.Fatalf("the a100 is leased, yet: %v", err)
	}
	for _, l := range held {
		release(t, p, l, Released)
	}
	assertClean(t, p)
}

// TestLabelWaiterDoesNotBlockOthers: an eval waiting for a kind of executor
// never holds up a later one that a free executor of another kind serves;
// the matching executor, when freed, goes to it first.
func TestLabelWaiterDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	p, b := setupLabeled(t)
	a100 := map[string]string{"gpu": "a100"}
	busy, err := p.Acquire(t.Context(), "busy", time.Minute, AcquireArgs{Require: a100})
	if err != nil {
		t.Fatal(err)
	}
	wake := p.WakeKey("w1")
	if _, err := p.Acquire(t.Context(), "wants-a100", time.Minute, AcquireArgs{Require: a100, Wait: Wait{Wake: wake, PlaceTTL: time.Minute}}); !errors.Is(err, ErrWaiting) {
		t.Fatalf("want to wait: %v", err)
	}
	other, err := p.Acquire(t.Context(), "anything", time.Minute, AcquireArgs{Wait: Wait{Wake: wake, PlaceTTL: time.Minute}})
	if err != nil {
		t.Fatalf("an eval behind the waiter, served by a free executor, waited: %v", err)
	}
	assertClean(t, p)
	release(t, p, busy, Released)
	msg, err := b.client.RPop(t.Context(), wake).Result()
	if err != nil {
		t.Fatalf("no grant pushed: %v", err)
	}
	g, err := ParseGrant(msg)
	if err != nil || g.EvalID != "wants-a100" || g.URL != "http://a100" {
		t.Fatalf("grant %+v, %v", g, err)
	}
	// Freed, the other executor goes back to the indexes, not to the
	// a100's waiter (gone) nor anyone.
	release(t, p, other, Released)
	release(t, p, g, Released)
	assertClean(t, p)
	st, _ := p.Status(t.Context())
	if st.Counts[StateAvailable] != 3 || len(st.Waiters) != 0 {
		t.Fatalf("counts %v waiters %v", st.Counts, st.Waiters)
	}
}

func TestRelabel(t *testing.T) {
	t.Parallel()
	p, _ := setupLabeled(t)
	// Registering again with no labels keeps them.
	regs, err := p.Register(t.Context(), Executor{URL: "http://a100"})
	if err != nil || regs[0].Outcome != AlreadyRegistered {
		t.Fatalf("%+v %v", regs, err)
	}
	// With other labels, they replace the old ones, never silently.
	regs, err = p.Register(t.Context(), Executor{URL: "http://a100", Labels: map[string]string{"gpu": "a100", "region": "us"}})
	if err != nil || regs[0].Outcome != RegisteredRelabeled {
		t.Fatalf("%+v %v", regs, err)
	}
	l, err := p.Acquire(t.Context(), "us", time.Minute, AcquireArgs{Require: map[string]string{"region": "us"}})
	if err != nil || l.URL != "http://a100" {
		t.Fatalf("%s %v", l.URL, err)
	}
	// A leased executor is relabeled at once and returned under the new set.
	if out, err := p.Relabel(t.Context(), l.URL, map[string]string{"gpu": "b200"}); err != nil || out != Relabeled {
		t.Fatalf("%s %v", out, err)
	}
	release(t, p, l, Released)
	if ok, _ := p.CanServe(t.Context(), map[string]string{"region": "us"}); ok {
		t.Fatal("region=us still servable after the relabel")
	}
	if l, err := p.Acquire(t.Context(), "b200", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "b200"}}); err != nil || l.URL != "http://a100" {
		t.Fatalf("%s %v", l.URL, err)
	}
	if out, err := p.Relabel(t.Context(), "http://cpu", nil); err != nil || out != Unchanged {
		t.Fatalf("%s %v", out, err)
	}
	if _, err := p.Relabel(t.Context(), "http://nope", nil); !errors.Is(err, ErrUnknownExecutor) {
		t.Fatal(err)
	}
	if _, err := p.Relabel(t.Context(), "http://cpu", map[string]string{"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	assertClean(t, p)
}

// TestCheckSeesBrokenLabelIndexes: a label index that lost an executor is
// invariant 8.
func TestCheckSeesBrokenLabelIndexes(t *testing.T) {
	t.Parallel()
	p, b := setupLabeled(t)
	if err := b.client.Del(t.Context(), p.keys.LabelledFor("gpu=a100")).Err(); err != nil {
		t.Fatal(err)
	}
	vs, err := p.Check(t.Context())
	if err != nil || len(vs) != 1 || vs[0].Invariant != 8 {
		t.Fatalf("violations %v, %v; want one of invariant 8", vs, err)
	}
}

// TestDeregisterLabeled: a removed executor leaves every index and count.
func TestDeregisterLabeled(t *testing.T) {
	t.Parallel()
	p, _ := setupLabeled(t)
	l := acquire(t, p, "e", time.Minute) // one of them, leased: drained
	for _, u := range []string{"http://a100", "http://h100", "http://cpu"} {
		if _, err := p.Deregister(t.Context(), u); err != nil {
			t.Fatal(err)
		}
	}
	release(t, p, l, Released)
	if ok, _ := p.CanServe(t.Context(), map[string]string{"gpu": "a100"}); ok {
		t.Fatal("a100 servable with no executor")
	}
	assertClean(t, p)
	st, _ := p.Status(t.Context())
	if len(st.Executors) != 0 {
		t.Fatalf("%+v", st.Executors)
	}
}

// TestHistory: every lease that ends is in the history, with how it ended.
func TestHistory(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1", "http://e2")
	start := time.Now().Add(-time.Second)
	a := acquire(t, p, "eval-a", time.Minute)
	release(t, p, a, Released)
	b := acquire(t, p, "eval-b", time.Millisecond)
	waitReclaimable(t, p, b)
	if _, err := p.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	spans, err := p.History(t.Context(), start, 100)
	if err != nil || len(spans) != 2 {
		t.Fatalf("history %+v, %v", spans, err)
	}
	if spans[0].EvalID != "eval-b" || spans[0].How != "reclaimed" || spans[1].EvalID != "eval-a" || spans[1].How != "released" || spans[1].To.Before(spans[1].From) {
		t.Fatalf("history %+v", spans)
	}
	only, _ := p.History(t.Context(), start, 100, a.URL)
	for _, s := range only {
		if s.URL != a.URL {
			t.Fatalf("filtered history holds %s", s.URL)
		}
	}
}

// TestPage: the pool read a page at a time, every executor once, each as
// Status shows it.
func TestPage(t *testing.T) {
	t.Parallel()
	var urls []string
	for i := range 25 {
		urls = append(urls, fmt.Sprintf("http://e%02d", i))
	}
	p, _ := setup(t, urls...)
	l := acquire(t, p, "eval-a", time.Minute)
	if _, err := p.Quarantine(t.Context(), urls[3], ReasonOperator); err != nil {
		t.Fatal(err)
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]State{}
	for _, e := range st.Executors {
		want[e.URL] = e.State
	}
	got := map[string]State{}
	var cursor uint64
	for pages := 0; ; pages++ {
		page, next, counts, err := p.Page(t.Context(), cursor, 10)
		if err != nil || counts.Registered != 25 || counts.Leased != 1 || counts.Quarantined != 1 {
			t.Fatalf("page: %d executors, counts %+v, %v", len(page), counts, err)
		}
		for _, e := range page {
			if _, dup := got[e.URL]; dup {
				t.Fatalf("%s on two pages", e.URL)
			}
			got[e.URL] = e.State
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("pages %v, status %v", got, want)
	}
	if got[l.URL] != StateLeased || got[urls[3]] != StateQuarantined {
		t.Fatalf("leased %s, quarantined %s", got[l.URL], got[urls[3]])
	}
}

// TestReentrySupersedesQuietly: a retried attempt re-enters its eval's
// lease under a new token; the older attempt's cleanup, a designed path,
// is then a duplicate, not an alert, and changes nothing.
func TestReentrySupersedesQuietly(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	old := acquire(t, p, "eval-a", time.Minute)
	now := acquire(t, p, "eval-a", time.Minute)
	if !now.Reentered || now.Token == old.Token {
		t.Fatalf("re-entry: %+v", now)
	}
	r, err := p.Release(t.Context(), old, ReleaseArgs{Path: "failure", ByCleanup: true})
	if err != nil || r.Outcome != StaleLease || !r.Duplicate || r.Double {
		t.Fatalf("the superseded attempt's cleanup: %+v, %v; want stale_lease, a duplicate", r, err)
	}
	if n := b.logs.Count("double release detected"); n != 0 {
		t.Fatalf("%d double release warnings", n)
	}
	if _, err := p.Renew(t.Context(), now, time.Minute); err != nil {
		t.Fatalf("the newer attempt lost its lease: %v", err)
	}
	release(t, p, now, Released)
	assertWhole(t, p, "http://e1")
}
