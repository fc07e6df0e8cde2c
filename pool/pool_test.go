package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

type testBundle struct {
	client  *redis.Client
	logs    *evaltest.LogBuffer
	metrics *Metrics
}

// testGrace is the lease grace of the tests' pools, short so that expired
// leases are reclaimed quickly.
const testGrace = 50 * time.Millisecond

// setup returns a pool of its own on the package's Redis, with urls
// registered, and the bundle to look inside it.
func setup(t *testing.T, urls ...string) (*Pool, *testBundle) {
	t.Helper()
	return setupWith(t, Settings{LeaseGrace: testGrace}, urls...)
}

// setupWith is setup with the pool's settings.
func setupWith(t *testing.T, s Settings, urls ...string) (*Pool, *testBundle) {
	t.Helper()
	client := evaltest.Client(t)
	logger, logs := evaltest.Logger()
	b := &testBundle{client: client, logs: logs, metrics: NewMetrics()}
	p, err := New(client, Options{Name: evaltest.Pool(t, client), Logger: logger, Metrics: b.metrics})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Configure(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	register(t, p, urls...)
	return p, b
}

// poolOn is a handle on the pool name of client, a Redis of the test's own
// (for a flush, an ACL, a full Redis), with the tests' lease grace.
func poolOn(t *testing.T, client *redis.Client, name string) *Pool {
	t.Helper()
	p, err := New(client, Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Configure(t.Context(), Settings{LeaseGrace: testGrace}); err != nil {
		t.Fatal(err)
	}
	return p
}

func register(t *testing.T, p *Pool, urls ...string) {
	t.Helper()
	execs := make([]Executor, len(urls))
	for i, u := range urls {
		execs[i] = Executor{URL: u}
	}
	if len(execs) == 0 {
		return
	}
	if _, err := p.Register(t.Context(), execs...); err != nil {
		t.Fatal(err)
	}
}

// waitReclaimable waits until Redis's clock has passed l's deadline by the
// pool's grace, when Reap and Acquire reclaim it.
func waitReclaimable(t *testing.T, p *Pool, l Lease) {
	t.Helper()
	s, err := p.Settings(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "lease never became reclaimable", func() bool {
		now, err := p.client.Time(t.Context()).Result()
		return err == nil && now.After(l.Deadline.Add(s.LeaseGrace))
	})
}

// writeField sets field of url's executor record to value, a JSON value, or
// drops it when value is empty, as a lost or foreign write would.
func writeField(ctx context.Context, c *redis.Client, k keys.Pool, url, field, value string) error {
	raw, err := c.HGet(ctx, k.Executors(), url).Result()
	if err != nil {
		return err
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		return err
	}
	if value == "" {
		delete(rec, field)
	} else {
		rec[field] = json.RawMessage(value)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return c.HSet(ctx, k.Executors(), url, b).Err()
}

func acquire(t *testing.T, p *Pool, evalID string, ttl time.Duration) Lease {
	t.Helper()
	l, err := p.Acquire(t.Context(), evalID, ttl, AcquireArgs{})
	if err != nil {
		t.Fatalf("acquire for %s: %v", evalID, err)
	}
	return l
}

func release(t *testing.T, p *Pool, l Lease, want ReleaseOutcome) ReleaseResult {
	t.Helper()
	r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "test"})
	if err != nil {
		t.Fatalf("release %s: %v", l.URL, err)
	}
	if r.Outcome != want {
		t.Fatalf("release %s by %s (token %s): outcome %s, want %s", l.URL, l.EvalID, l.Token, r.Outcome, want)
	}
	return r
}

// assertWhole fails the test unless Check is clean and every executor in
// want is available exactly once.
func assertWhole(t *testing.T, p *Pool, want ...string) {
	t.Helper()
	vs, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("violation: %s", v)
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Executors) != len(want) {
		t.Fatalf("status lists %d executors, want %d: %+v", len(st.Executors), len(want), st.Executors)
	}
	for i, e := range st.Executors {
		if e.URL != want[i] || e.State != StateAvailable || e.InAvailable != 1 {
			t.Errorf("executor %d: %s %s in_available=%d, want %s available once", i, e.URL, e.State, e.InAvailable, want[i])
		}
	}
}

func TestAcquireEmptyPool(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	if _, err := p.Deregister(t.Context(), "http://e1"); err != nil {
		t.Fatal(err)
	}
	_, err := p.Acquire(t.Context(), "e1", time.Second, AcquireArgs{})
	if !errors.Is(err, ErrNoExecutor) || errors.Is(err, ErrPoolMissing) {
		t.Fatalf("err = %v, want ErrNoExecutor alone", err)
	}
	if got := testutil.ToFloat64(b.metrics.acquires.WithLabelValues(p.Name(), "none")); got != 1 {
		t.Errorf("acquire_total{none} = %v, want 1", got)
	}
}

// The original talk's test, made stronger: the outcomes are exact, the
// executor is in the pool once, and the log names the double release.
// TestDuplicateAndDoubleReleases: the second path of a released lease is
// absorbed quietly, under its own label; a release by a token that never
// held the executor is absorbed too, and is the alert.
func TestDuplicateAndDoubleReleases(t *testing.T) {
	t.Parallel()
	const e1 = "http://executor-1"
	p, b := setup(t, e1)
	l := acquire(t, p, "eval-a", time.Minute)

	release(t, p, l, Released)
	r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "test", ByCleanup: true})
	if err != nil || r.Outcome != AlreadyInPool || !r.Duplicate || r.Double {
		t.Errorf("the lease's second path: %+v, %v; want already_in_pool, a duplicate, not double", r, err)
	}
	if n := b.logs.Count(`"message":"double release detected"`); n != 0 {
		t.Fatalf("the expected second path logged %d warnings:\n%s", n, b.logs)
	}
	forged := release(t, p, Lease{URL: e1, EvalID: "eval-z", Token: "never-held"}, AlreadyInPool)
	if !forged.Double || forged.Duplicate {
		t.Errorf("a token that never held it: duplicate=%v double=%v, want false, true", forged.Duplicate, forged.Double)
	}
	// The same token again, by anything but a designed path (a late
	// callback replayed): the alert too.
	if late := release(t, p, l, AlreadyInPool); !late.Double || late.Duplicate {
		t.Errorf("a replay of a released lease: duplicate=%v double=%v, want false, true", late.Duplicate, late.Double)
	}
	assertWhole(t, p, e1)
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if e := st.Executors[0]; e.Releases != 1 || e.DoubleReleases != 2 || e.Duplicates != 1 {
		t.Errorf("status counts %d releases, %d double, %d duplicates; want 1, 2, 1", e.Releases, e.DoubleReleases, e.Duplicates)
	}
	if n := b.logs.Count(`"message":"double release detected"`); n != 2 {
		t.Fatalf("%d double release log lines, want 2; log:\n%s", n, b.logs)
	}
	for _, field := range []string{`"executor":"` + e1 + `"`, `"eval":"eval-z"`, `"path":"test"`, `"since_last_release":`} {
		if b.logs.Count(field) == 0 {
			t.Errorf("log lacks %s:\n%s", field, b.logs)
		}
	}
	for outcome, want := range map[string]float64{"released": 1, "duplicate": 1, "already_in_pool": 2, "stale_lease": 0} {
		if got := testutil.ToFloat64(b.metrics.releases.WithLabelValues(p.Name(), outcome, "other")); got != want {
			t.Errorf("release_total{%s} = %v, want %v", outcome, got, want)
		}
	}
	if got := testutil.ToFloat64(b.metrics.doubles.WithLabelValues(p.Name(), "other")); got != 2 {
		t.Errorf("double_release_total = %v, want 2", got)
	}
}

// The hole in the original design: a late release of A's executor, after B
// acquired it, must not free B's executor: neither the second path of A's
// released lease (expected), nor A's own release after its lease was
// reclaimed (the alert: A outlived its lease).
func TestStaleReleaseKeepsTheHoldersLease(t *testing.T) {
	t.Parallel()
	for _, reclaimed := range []bool{false, true} {
		t.Run(fmt.Sprint("reclaimed=", reclaimed), func(t *testing.T) {
			t.Parallel()
			const e = "http://only"
			p, _ := setup(t, e)
			ttl := time.Minute
			if reclaimed {
				ttl = 10 * time.Millisecond
			}
			a := acquire(t, p, "eval-a", ttl)
			if reclaimed {
				waitReclaimable(t, p, a)
			} else {
				release(t, p, a, Released)
			}
			bl := acquire(t, p, "eval-b", time.Minute) // reclaims A's, if expired
			if bl.URL != e || bl.Fence <= a.Fence {
				t.Fatalf("B got %s fence %d, want %s with fence > %d", bl.URL, bl.Fence, e, a.Fence)
			}
			r, err := p.Release(t.Context(), a, ReleaseArgs{Path: "failure", ByCleanup: true})
			if err != nil || r.Outcome != StaleLease || r.Double != reclaimed || r.Duplicate == reclaimed || r.Holder != "eval-b" {
				t.Errorf("late release: %+v, %v; want stale_lease, double=%v, held by eval-b", r, err, reclaimed)
			}
			st, err := p.Status(t.Context())
			if wantStale := map[bool]int64{true: 1}[reclaimed]; err != nil || st.Executors[0].StaleReleases != wantStale || st.Executors[0].DoubleReleases != wantStale {
				t.Errorf("status after a late release: %+v, %v", st.Executors[0], err)
			}
			if _, err := p.Acquire(t.Context(), "eval-c", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
				t.Fatalf("third eval acquire: err = %v, want ErrNoExecutor: B's executor was freed", err)
			}
			if _, err := p.Renew(t.Context(), bl, time.Minute); err != nil {
				t.Fatalf("B lost its lease: %v", err)
			}
			release(t, p, bl, Released)
			assertWhole(t, p, e)
		})
	}
}

func TestExpiredLeaseIsReclaimed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		reclaim func(t *testing.T, p *Pool) // must make the executor usable again
	}{
		{"by Reap", func(t *testing.T, p *Pool) {
			n, err := p.Reap(t.Context())
			if err != nil || n != 1 {
				t.Fatalf("Reap = %d, %v; want 1", n, err)
			}
			if n, _ := p.Reap(t.Context()); n != 0 {
				t.Fatalf("second Reap reclaimed %d, want 0", n)
			}
		}},
		{"by the next Acquire", func(t *testing.T, p *Pool) {
			l := acquire(t, p, "eval-next", time.Minute)
			release(t, p, l, Released)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const e = "http://e"
			p, _ := setup(t, e)
			old := acquire(t, p, "eval-old", 20*time.Millisecond)
			evaltest.Eventually(t, 5*time.Second, "lease never showed as expired", func() bool {
				st, err := p.Status(t.Context())
				return err == nil && st.Executors[0].State == StateExpired
			})
			if _, err := p.Renew(t.Context(), old, time.Minute); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("renew of an expired lease: err = %v, want ErrLeaseLost", err)
			}
			waitReclaimable(t, p, old)
			tt.reclaim(t, p)
			assertWhole(t, p, e)

			// The old holder wakes up: its release must not add a copy.
			release(t, p, old, AlreadyInPool)
			next := acquire(t, p, "eval-2", time.Minute)
			release(t, p, old, StaleLease)
			release(t, p, next, Released)
			assertWhole(t, p, e)
		})
	}
}

func TestAcquireIsReentrant(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1", "http://e2", "http://e3")
	first := acquire(t, p, "eval-a", time.Minute)
	again := acquire(t, p, "eval-a", time.Minute)
	if again.URL != first.URL || !again.Reentered {
		t.Fatalf("re-acquire got %s reentered=%v, want %s reentered", again.URL, again.Reentered, first.URL)
	}
	if again.Fence <= first.Fence || again.Token == first.Token {
		t.Fatalf("re-acquire kept fence %d / token: the older attempt could still act", again.Fence)
	}
	// The older attempt is fenced off: it can neither renew nor release.
	if _, err := p.Renew(t.Context(), first, time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("older attempt renewed: err = %v", err)
	}
	release(t, p, first, StaleLease)
	other := acquire(t, p, "eval-b", time.Minute)
	if other.URL == first.URL {
		t.Fatalf("eval-b got eval-a's executor %s", other.URL)
	}
	release(t, p, again, Released)
	release(t, p, other, Released)
	assertWhole(t, p, "http://e1", "http://e2", "http://e3")
}

// An expired lease is re-entered by its own eval while the grace runs
// (nobody else can hold the executor, and the higher fence drops the older
// attempt) and reclaimed after it.
func TestReentryAfterExpiry(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name          string
		grace         time.Duration
		wantReentered bool
	}{
		{"within the grace", time.Minute, true},
		{"after the grace", testGrace, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, _ := setupWith(t, Settings{LeaseGrace: tt.grace}, "http://e1")
			old := acquire(t, p, "eval-a", 10*time.Millisecond)
			evaltest.Eventually(t, 5*time.Second, "lease never expired", func() bool {
				st, err := p.Status(t.Context())
				return err == nil && st.Counts[StateExpired] == 1 && (tt.wantReentered || st.Now.After(old.Deadline.Add(tt.grace)))
			})
			l := acquire(t, p, "eval-a", time.Minute)
			if l.Reentered != tt.wantReentered || l.Token == old.Token || l.Fence <= old.Fence {
				t.Fatalf("reentered = %v, want %v (fence %d after %d)", l.Reentered, tt.wantReentered, l.Fence, old.Fence)
			}
			release(t, p, old, StaleLease)
			release(t, p, l, Released)
			assertWhole(t, p, "http://e1")
		})
	}
}

func TestRenew(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1")
	l := acquire(t, p, "eval-a", 50*time.Millisecond)
	renewed, err := p.Renew(t.Context(), l, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !renewed.Deadline.After(l.Deadline.Add(50 * time.Minute)) {
		t.Fatalf("deadline %s not pushed an hour past %s", renewed.Deadline, l.Deadline)
	}
	if n, err := p.Reap(t.Context()); err != nil || n != 0 {
		t.Fatalf("Reap took a renewed lease: %d, %v", n, err)
	}
	release(t, p, l, Released)
	if _, err := p.Renew(t.Context(), l, time.Hour); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renew after release: err = %v, want ErrLeaseLost", err)
	}
	if _, err := p.Renew(t.Context(), l, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("renew with TTL 0: err = %v, want ErrInvalid", err)
	}
}

func TestRenewAll(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1", "http://e2", "http://e3", "http://e4", "http://e5")
	live := acquire(t, p, "eval-live", time.Minute)
	other := acquire(t, p, "eval-other", 2*time.Minute)
	released := acquire(t, p, "eval-released", time.Minute)
	release(t, p, released, Released)
	older := acquire(t, p, "eval-reentered", time.Minute)
	newer := acquire(t, p, "eval-reentered", time.Minute) // takes the lease over with a new token
	expired := acquire(t, p, "eval-expired", 5*time.Millisecond)
	evaltest.Eventually(t, 5*time.Second, "lease never expired", func() bool {
		st, err := p.Status(t.Context())
		return err == nil && st.Counts[StateExpired] == 1
	})

	rs := []Renewal{
		{Lease: live, TTL: time.Hour},
		{Lease: other, TTL: 2 * time.Hour},
		{Lease: released, TTL: time.Hour},
		{Lease: older, TTL: time.Hour},
		{Lease: expired, TTL: time.Hour},
		{Lease: Lease{URL: "http://unknown", Token: "t"}, TTL: time.Hour},
		{Lease: newer, TTL: time.Hour},
	}
	if err := lua.Renew.Load(t.Context(), b.client).Err(); err != nil {
		t.Fatal(err)
	}
	calls := evaltest.CountScript(b.client, lua.Renew)
	if err := p.RenewAll(t.Context(), rs); err != nil {
		t.Fatal(err)
	}
	if n := calls.N(); n != 1 {
		t.Fatalf("%d renewals took %d calls, want 1", len(rs), n)
	}
	for i, wantLost := range []bool{false, false, true, true, true, true, false} {
		r := rs[i]
		if got := errors.Is(r.Err, ErrLeaseLost); got != wantLost {
			t.Errorf("renewal %d (%s): err = %v, want lost %t", i, r.Lease.EvalID, r.Err, wantLost)
		}
		if left := time.Until(r.Lease.Deadline); !wantLost && (left < r.TTL-time.Minute || left > r.TTL) {
			t.Errorf("renewal %d (%s): deadline %s not pushed to about %s from now", i, r.Lease.EvalID, r.Lease.Deadline, r.TTL)
		}
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Executors {
		for _, r := range rs {
			if r.Err == nil && r.Lease.URL == e.URL && (e.Lease == nil || !e.Lease.Deadline.Equal(r.Lease.Deadline)) {
				t.Errorf("%s: the pool holds lease %+v, the renewal answered deadline %s", e.URL, e.Lease, r.Lease.Deadline)
			}
		}
	}
	// Only the live leases moved: the expired one stays expired for the reaper.
	waitReclaimable(t, p, expired)
	if n, err := p.Reap(t.Context()); err != nil || n != 1 {
		t.Fatalf("Reap reclaimed %d leases (err %v), want the expired one only", n, err)
	}
	for _, l := range []Lease{live, other, newer} {
		release(t, p, l, Released)
	}

	if err := p.RenewAll(t.Context(), []Renewal{{Lease: live, TTL: time.Hour}, {Lease: other, TTL: 0}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a TTL of 0 in the batch: err = %v, want ErrInvalid", err)
	}
	if err := p.RenewAll(t.Context(), nil); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
}

func TestDeregister(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://idle", "http://busy")
	l := acquire(t, p, "eval-a", time.Minute)
	idle := "http://idle"
	if l.URL == idle {
		idle = "http://busy"
	}

	for _, tt := range []struct {
		url     string
		want    DeregisterOutcome
		wantErr error
	}{
		{idle, Removed, nil},
		{l.URL, Draining, nil},
		{l.URL, Draining, nil},
		{"http://never-registered", "", ErrUnknownExecutor},
		{"ftp://nope", "", ErrInvalid},
	} {
		got, err := p.Deregister(t.Context(), tt.url)
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Fatalf("Deregister(%s) = %q, %v; want %q, %v", tt.url, got, err, tt.want, tt.wantErr)
		}
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Executors) != 1 || st.Executors[0].State != StateDraining {
		t.Fatalf("status = %+v, want only %s draining", st.Executors, l.URL)
	}
	// A draining executor is never handed out again, even to its holder's
	// retry, and leaves at its release.
	if _, err := p.Acquire(t.Context(), "eval-b", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("acquire while draining: err = %v, want ErrNoExecutor", err)
	}
	r := release(t, p, l, Released)
	if !r.Removed {
		t.Error("release of a draining executor did not report its removal")
	}
	release(t, p, l, NotLeased)
	assertWhole(t, p)
}

func TestDrainEndsAtReclaim(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1")
	acquire(t, p, "eval-a", 10*time.Millisecond)
	if out, err := p.Deregister(t.Context(), "http://e1"); out != Draining || err != nil {
		t.Fatalf("Deregister = %s, %v", out, err)
	}
	evaltest.Eventually(t, 5*time.Second, "expired draining lease never reaped", func() bool {
		n, err := p.Reap(t.Context())
		return err == nil && n == 1
	})
	assertWhole(t, p)
}

func TestRegister(t *testing.T) {
	t.Parallel()
	p, _ := setup(t)
	out, err := p.Register(t.Context(), Executor{URL: "http://e1/", Labels: map[string]string{"gpu": "a100"}}, Executor{URL: "https://e2:8443/base"})
	if err != nil || out[0].Outcome != Added || out[1].Outcome != Added || out[0].URL != "http://e1" {
		t.Fatalf("Register = %v, %v", out, err)
	}
	out, err = p.Register(t.Context(), Executor{URL: "http://e1"})
	if err != nil || out[0].Outcome != AlreadyRegistered {
		t.Fatalf("second Register = %v, %v; want already_registered", out, err)
	}
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Executors[0].Labels["gpu"] != "a100" || st.Executors[0].AddedAt.IsZero() {
		t.Errorf("e1 = %+v, want label gpu=a100 and added_at", st.Executors[0])
	}
	assertWhole(t, p, "http://e1", "https://e2:8443/base")

	for _, bad := range []string{"", "e3", "127.0.0.1:80", "ftp://e3", "http://", "http://e3?x=1", "http://u:p@e3", "http://[::1"} {
		_, err := p.Register(t.Context(), Executor{URL: "http://good"}, Executor{URL: bad})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("Register(%q): err = %v, want ErrInvalid", bad, err)
		}
	}
	assertWhole(t, p, "http://e1", "https://e2:8443/base") // nothing of the bad batches landed
}

// Registering many executors is one script call per thousand, and a flushed
// script cache costs nothing but the script's one EVAL.
func TestRegisterMany(t *testing.T) {
	t.Parallel()
	p, b := setup(t)
	if err := lua.Register.Load(t.Context(), b.client).Err(); err != nil {
		t.Fatal(err)
	}
	calls := evaltest.CountScript(b.client, lua.Register)
	execs := make([]Executor, 2500)
	want := make([]string, len(execs))
	for i := range execs {
		execs[i].URL = fmt.Sprintf("http://e%05d", i)
		want[i] = execs[i].URL
	}
	if _, err := p.Register(t.Context(), execs...); err != nil {
		t.Fatal(err)
	}
	if n := calls.N(); n != 3 {
		t.Fatalf("2,500 executors registered in %d calls, want 3", n)
	}
	if err := b.client.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	out, err := p.Register(t.Context(), execs...)
	if err != nil {
		t.Fatalf("register after SCRIPT FLUSH: %v", err)
	}
	for i, o := range out {
		if o.Outcome != AlreadyRegistered {
			t.Fatalf("outcome %d = %s, want already_registered", i, o)
		}
	}
	assertWhole(t, p, want...)
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	for _, opts := range []Options{{Name: "a{b"}, {Name: "a}"}, {Name: " "}, {Name: "x\n"}, {ReclaimBatch: -1}} {
		if _, err := New(nil, opts); !errors.Is(err, ErrInvalid) {
			t.Errorf("New(%+v): err = %v, want ErrInvalid", opts, err)
		}
	}
	for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond, MaxLeaseTTL + time.Millisecond} {
		p, _ := New(nil, Options{})
		if _, err := p.Acquire(t.Context(), "e", ttl, AcquireArgs{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("Acquire(ttl=%s): err = %v, want ErrInvalid", ttl, err)
		}
	}
}

// The fence keeps rising even when Redis loses the counter, so executors
// that remember the highest fence they saw do not refuse every new lease.
func TestFenceSurvivesALostCounter(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	first := acquire(t, p, "eval-a", time.Minute)
	release(t, p, first, Released)
	if first.Fence < first.AcquiredAt.UnixMilli() {
		t.Fatalf("fence %d below the clock %d", first.Fence, first.AcquiredAt.UnixMilli())
	}
	if err := b.client.Del(t.Context(), p.keys.Fence()).Err(); err != nil {
		t.Fatal(err)
	}
	// Once Redis's clock has passed the old fence, the first acquire on the
	// lost counter (INCR gives 1) must still hand out a higher fence.
	evaltest.Eventually(t, time.Second, "Redis's clock never passed the old fence", func() bool {
		now, err := b.client.Time(t.Context()).Result()
		return err == nil && now.UnixMilli() > first.Fence
	})
	if l := acquire(t, p, "eval-b", time.Minute); l.Fence <= first.Fence {
		t.Fatalf("fence %d after the counter was lost, want above %d", l.Fence, first.Fence)
	}
}

func TestReapEveryRunsOncePerInterval(t *testing.T) {
	t.Parallel()
	p, _ := setup(t, "http://e1")
	waitReclaimable(t, p, acquire(t, p, "eval-a", time.Millisecond))
	var ran int
	for range 5 {
		n, ok, err := p.ReapEvery(t.Context(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			ran++
			if n != 1 {
				t.Fatalf("the reap that ran reclaimed %d, want 1", n)
			}
		}
	}
	if ran != 1 {
		t.Fatalf("ReapEvery ran %d times in one interval, want 1", ran)
	}
	assertWhole(t, p, "http://e1")
}

// TestReleaseAlong: commands sent along with a release run ahead of it in
// its round trip, and a server that lost the release (a restarted Redis,
// FUNCTION FLUSH, SCRIPT FLUSH) still releases.
func TestReleaseAlong(t *testing.T) {
	t.Parallel()
	const e1 = "http://executor-1"
	for _, flush := range []bool{false, true} {
		p, b := setup(t, e1)
		l := acquire(t, p, "eval-a", time.Minute)
		if flush {
			if err := b.client.FunctionFlush(t.Context()).Err(); err != nil {
				t.Fatal(err)
			}
			if err := b.client.ScriptFlush(t.Context()).Err(); err != nil {
				t.Fatal(err)
			}
		}
		key := p.keys.Scratch("test-along")
		var set *redis.StatusCmd
		r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "test", Pipelined: func(pipe redis.Pipeliner) {
			set = pipe.Set(t.Context(), key, "written", time.Minute)
		}})
		if err != nil || r.Outcome != Released {
			t.Fatalf("flushed=%v: %+v, %v; want released", flush, r, err)
		}
		if got, err := b.client.Get(t.Context(), key).Result(); set.Err() != nil || err != nil || got != "written" {
			t.Fatalf("flushed=%v: the command sent along: %v; read back %q, %v", flush, set.Err(), got, err)
		}
		assertWhole(t, p, e1)
	}
}

// TestOutlivedLeasesAreRememberedForALimit: a designed release by a lease
// that ended otherwise than by its release (reclaimed: its holder outlived
// it) is the alert, whatever the executor did since (drained and added
// again, leased to another eval), as long as the pool remembers the token:
// the last 100,000 such leases. The second path of a released lease is
// told apart with no limit; past the 100,000, an outlived lease's release is
// taken for one.
func TestOutlivedLeasesAreRememberedForALimit(t *testing.T) {
	t.Parallel()
	const e1 = "http://executor-1"
	p, b := setup(t, e1)
	expire := func() { reclaimNow(t, p, e1) }
	designed := func(l Lease, want ReleaseOutcome) ReleaseResult {
		r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "failure", ByCleanup: true})
		if err != nil || r.Outcome != want {
			t.Fatalf("release of %s: %+v, %v; want %s", l.EvalID, r, err, want)
		}
		return r
	}
	outlived := acquire(t, p, "eval-outlived", time.Minute)
	expire()
	// Drained while leased: its lease ends with the executor, which comes
	// back under a record of its own.
	drained := acquire(t, p, "eval-drained", time.Minute)
	if _, err := p.Deregister(t.Context(), e1); err != nil {
		t.Fatal(err)
	}
	expire()
	if _, err := p.Register(t.Context(), Executor{URL: e1}); err != nil {
		t.Fatal(err)
	}
	first := acquire(t, p, "eval-released", time.Minute)
	release(t, p, first, Released)
	for i := range 100 {
		release(t, p, acquire(t, p, fmt.Sprint("eval-", i), time.Minute), Released)
	}
	other := acquire(t, p, "eval-other", time.Minute)
	for _, l := range []Lease{outlived, drained} {
		if r := designed(l, StaleLease); !r.Double || r.Duplicate {
			t.Errorf("the outlived %s's release over another eval's lease: %+v; want a double release", l.EvalID, r)
		}
	}
	if r := designed(first, StaleLease); r.Double || !r.Duplicate {
		t.Errorf("a released lease's second path, 100 leases later: %+v; want a duplicate", r)
	}
	release(t, p, other, Released)
	// 100,000 later outlived leases, written straight into the set the
	// scripts keep (their scores after the first's); the reaper trims the
	// set to its cap.
	for i := 0; i < 100_000; i += 10_000 {
		members := make([]redis.Z, 10_000)
		for j := range members {
			members[j] = redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: fmt.Sprintf("later-%d", i+j)}
		}
		if err := b.client.ZAdd(t.Context(), p.keys.Outlived(), members...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n, err := b.client.ZCard(t.Context(), p.keys.Outlived()).Result(); err != nil || n != 100_000 {
		t.Fatalf("outlived tokens kept: %d, %v; want the cap, 100000", n, err)
	}
	if r := designed(outlived, AlreadyInPool); r.Double || !r.Duplicate {
		t.Errorf("the outlived holder's release past the memory: %+v; want it taken for a duplicate", r)
	}
	assertWhole(t, p, e1)
}

// TestOutlivedLostWithData: a Redis that lost the outlived set (FLUSH of
// the key, a rewind) forgets which holders outlived their leases: a late
// release by one is then taken for a second path, quietly, and still
// changes nothing: the eval that holds the executor keeps it.
func TestOutlivedLostWithData(t *testing.T) {
	t.Parallel()
	const e1 = "http://executor-1"
	p, b := setup(t, e1)
	outlived := acquire(t, p, "eval-outlived", time.Minute)
	reclaimNow(t, p, e1)
	holder := acquire(t, p, "eval-holder", time.Minute)
	if err := b.client.Del(t.Context(), p.keys.Outlived()).Err(); err != nil {
		t.Fatal(err)
	}
	r, err := p.Release(t.Context(), outlived, ReleaseArgs{Path: "failure", ByCleanup: true})
	if err != nil || r.Outcome != StaleLease || r.Holder != "eval-holder" || r.Double || !r.Duplicate {
		t.Fatalf("the outlived holder's release after the loss: %+v, %v; want stale_lease, a duplicate, eval-holder still holding", r, err)
	}
	if _, err := p.Renew(t.Context(), holder, time.Minute); err != nil {
		t.Fatalf("the holder's lease after the stale release: %v", err)
	}
	release(t, p, holder, Released)
	assertWhole(t, p, e1)
}

// TestReapDeletesTheReleasedTokensOfAnOlderRelease: releases up to 4d63ceb
// kept every released token, up to 100,000, in a set this release no
// longer reads; a reap deletes it, even while workers of that release
// still write it.
func TestReapDeletesTheReleasedTokensOfAnOlderRelease(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://executor-1")
	released := strings.TrimSuffix(p.keys.Outlived(), "outlived") + "released"
	for range 2 {
		if err := b.client.ZAdd(t.Context(), released, redis.Z{Score: 1, Member: "token-of-4d63ceb"}).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Reap(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n, err := b.client.Exists(t.Context(), released).Result(); err != nil || n != 0 {
			t.Fatalf("the older release's released tokens after a reap: %d, %v; want them deleted", n, err)
		}
	}
	assertWhole(t, p, "http://executor-1")
}

// reclaimNow moves the deadline of url's lease to the epoch, past any
// grace, and has the reaper reclaim it.
func reclaimNow(t *testing.T, p *Pool, url string) {
	t.Helper()
	if err := p.client.ZAdd(t.Context(), p.keys.Deadlines(), redis.Z{Score: 0, Member: url}).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Reap(t.Context()); err != nil || n != 1 {
		t.Fatalf("reap: %d, %v; want the lease of %s reclaimed", n, err, url)
	}
}
