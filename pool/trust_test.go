package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// One executor written many ways is one executor: every spelling registers
// under one canonical URL, so the pool can never hold it twice.
func TestParseURLCanonicalForm(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		want      string
		spellings []string
	}{
		{"http://127.0.0.1:17401", []string{
			"http://127.0.0.1:17401", "HTTP://127.0.0.1:17401/", "http://127.0.0.1:017401",
			"http://127.0.0.1:17401/.", "http://127.0.0.1:17401//", "Http://127.0.0.1:17401/./",
		}},
		{"http://e1", []string{"http://e1", "http://E1:80/", "http://e1:0080", "http://e1/a/.."}},
		{"https://e2/base", []string{"https://e2/base", "https://E2:443/base/", "https://e2/base/./", "https://e2//base"}},
		{"http://[::1]:8080", []string{"http://[::1]:8080/", "http://[::1]:08080"}},
		{"http://[::1]", []string{"http://[::1]:80"}},
	} {
		for _, s := range tt.spellings {
			got, err := ParseURL(s)
			if err != nil || got != tt.want {
				t.Errorf("ParseURL(%q) = %q, %v; want %q", s, got, err, tt.want)
			}
		}
	}
	for _, bad := range []string{"http://e:0", "http://e:65536", "http://e:x", "http://:80", "http:e", "http://e?", "http://e#f"} {
		if got, err := ParseURL(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseURL(%q) = %q, %v; want ErrInvalid", bad, got, err)
		}
	}

	p, _ := setup(t)
	var execs []Executor
	for _, s := range []string{"http://127.0.0.1:17401", "HTTP://127.0.0.1:17401/", "http://127.0.0.1:017401", "http://127.0.0.1:17401/."} {
		execs = append(execs, Executor{URL: s})
	}
	regs, err := p.Register(t.Context(), execs...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range regs {
		want := AlreadyRegistered
		if i == 0 {
			want = Added
		}
		if r.Outcome != want || r.URL != "http://127.0.0.1:17401" {
			t.Errorf("spelling %q: %+v, want %s under the canonical URL", execs[i].URL, r, want)
		}
	}
	assertWhole(t, p, "http://127.0.0.1:17401")
}

// Spellings that differ in the host itself are told apart by the executor's
// instance ID: a second URL for a registered instance is refused.
func TestRegisterRefusesASecondURLForOneInstance(t *testing.T) {
	t.Parallel()
	p, _ := setup(t)
	i1, i2 := p.Name()+"-1", p.Name()+"-2" // instance IDs of this test's own
	regs, err := p.Register(t.Context(),
		Executor{URL: "http://127.0.0.1:17401", InstanceID: i1},
		Executor{URL: "http://localhost:17401", InstanceID: i1},
		Executor{URL: "http://other:1", InstanceID: i2})
	if err != nil {
		t.Fatal(err)
	}
	if regs[0].Outcome != Added || regs[1].Outcome != Duplicate || regs[1].DuplicateOf != "http://127.0.0.1:17401" || regs[2].Outcome != Added {
		t.Fatalf("Register = %+v; want added, duplicate of the first, added", regs)
	}
	assertWhole(t, p, "http://127.0.0.1:17401", "http://other:1")

	// Once the first URL has left, the instance may come back under another.
	if _, err := p.Deregister(t.Context(), "http://127.0.0.1:17401"); err != nil {
		t.Fatal(err)
	}
	regs, err = p.Register(t.Context(), Executor{URL: "http://localhost:17401", InstanceID: i1})
	if err != nil || regs[0].Outcome != Added {
		t.Fatalf("Register after the first URL left = %+v, %v; want added", regs, err)
	}
	assertWhole(t, p, "http://localhost:17401", "http://other:1")
}

// Acquire believes the holders index only when the lease it points to is
// the eval's own, live, and not draining.
func TestAcquireTrustsNoStaleHolder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// break leaves eval-a's holders entry pointing at e1 in some bad way
		// and returns the lease, if any, that must stay untouched.
		brk     func(t *testing.T, p *Pool, b *testBundle) *Lease
		wantErr error // of eval-a's next acquire, with e1 the only executor
	}{
		{"lease record gone, executor since leased to another eval", func(t *testing.T, p *Pool, b *testBundle) *Lease {
			if err := writeField(t.Context(), b.client, p.keys, "http://e1", "lease", ""); err != nil {
				t.Fatal(err)
			}
			b.client.ZRem(t.Context(), p.keys.Deadlines(), "http://e1")
			if regs, err := p.Register(t.Context(), Executor{URL: "http://e1"}); err != nil || regs[0].Outcome != Repaired {
				t.Fatalf("Register of the lost executor = %+v, %v; want repaired", regs, err)
			}
			other := acquire(t, p, "eval-b", time.Minute)
			return &other
		}, ErrNoExecutor},
		{"lease record gone, nothing else", func(t *testing.T, p *Pool, b *testBundle) *Lease {
			if err := writeField(t.Context(), b.client, p.keys, "http://e1", "lease", ""); err != nil {
				t.Fatal(err)
			}
			b.client.ZAdd(t.Context(), p.keys.Available(), redis.Z{Score: 1, Member: "http://e1"})
			return nil
		}, nil},
		{"lease record unreadable", func(t *testing.T, p *Pool, b *testBundle) *Lease {
			if err := writeField(t.Context(), b.client, p.keys, "http://e1", "lease", `"not a lease"`); err != nil {
				t.Fatal(err)
			}
			return nil
		}, ErrNoExecutor},
		{"executor draining", func(t *testing.T, p *Pool, b *testBundle) *Lease {
			if out, err := p.Deregister(t.Context(), "http://e1"); err != nil || out != Draining {
				t.Fatalf("Deregister = %s, %v", out, err)
			}
			return nil
		}, ErrNoExecutor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			first := acquire(t, p, "eval-a", time.Minute)
			keep := tt.brk(t, p, b)
			l, err := p.Acquire(t.Context(), "eval-a", time.Minute, AcquireArgs{})
			if !errors.Is(err, tt.wantErr) || err == nil && (l.Reentered || l.Token == first.Token) {
				t.Fatalf("acquire = %+v, %v; want a fresh lease or %v", l, err, tt.wantErr)
			}
			if keep != nil {
				if _, err := p.Renew(t.Context(), *keep, time.Minute); err != nil {
					t.Fatalf("the other eval's lease was taken: renew = %v", err)
				}
			}
			if held, _ := b.client.HGet(t.Context(), p.keys.Holders(), "eval-a").Result(); err != nil && held != "" {
				t.Errorf("holders still names %s for eval-a after it got nothing", held)
			}
		})
	}
}

// A lost executors hash, then `pool add`: an executor still leased stays
// out of service (making it available would double-book it) until its
// lease, lost with its record, expires; the others come back at once.
func TestRegisterAfterTheExecutorsHashIsGone(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1", "http://e2")
	held := acquire(t, p, "eval-a", time.Second)
	if err := b.client.Del(t.Context(), p.keys.Executors()).Err(); err != nil {
		t.Fatal(err)
	}
	regs, err := p.Register(t.Context(), Executor{URL: "http://e1"}, Executor{URL: "http://e2"})
	if err != nil || regs[0].Outcome != Added || regs[1].Outcome != Added {
		t.Fatalf("Register = %+v, %v", regs, err)
	}
	if err := b.client.ZScore(t.Context(), p.keys.Available(), held.URL).Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("register put the leased %s in the available set (err %v)", held.URL, err)
	}
	other := acquire(t, p, "eval-b", time.Minute)
	if other.URL == held.URL {
		t.Fatalf("eval-b got %s, which eval-a holds", other.URL)
	}
	if _, err := p.Acquire(t.Context(), "eval-c", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("a third acquire on two executors: err = %v, want ErrNoExecutor", err)
	}
	release(t, p, held, NotLeased)
	release(t, p, other, Released)
	waitReclaimable(t, p, held)
	if n, err := p.Reap(t.Context()); err != nil || n != 1 {
		t.Fatalf("Reap = %d, %v; want the lost lease reclaimed", n, err)
	}
	assertWhole(t, p, "http://e1", "http://e2")
}

// A lost executors hash, then `pool add` with other labels: the index of
// the labels the executor had keeps an entry of it, which an acquire that
// requires them drops, never granting the executor leased since.
func TestLostRecordNeverGrantsALeasedExecutor(t *testing.T) {
	t.Parallel()
	p, b := setup(t)
	if _, err := p.Register(t.Context(), Executor{URL: "http://e1", Labels: map[string]string{"g": "1"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Del(t.Context(), p.keys.Executors()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Register(t.Context(), Executor{URL: "http://e1", Labels: map[string]string{"g": "2"}}); err != nil {
		t.Fatal(err)
	}
	held := acquire(t, p, "eval-a", time.Minute)
	if l, err := p.Acquire(t.Context(), "eval-b", time.Minute, AcquireArgs{Require: map[string]string{"g": "1"}}); err == nil {
		t.Fatalf("acquire requiring g=1 got %s, which eval-a holds (%s)", l.URL, held.URL)
	}
	if _, err := p.Renew(t.Context(), held, time.Minute); err != nil {
		t.Fatalf("eval-a's lease was taken: %v", err)
	}
}

// The epoch marker lost alone, the executors kept: an acquire that finds
// none free writes a new marker and asks again, so the eval waits for an
// executor, not for a pool said to be lost.
func TestLostEpochAloneIsWrittenAgain(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	acquire(t, p, "eval-a", time.Minute)
	if err := b.client.Del(t.Context(), p.keys.Epoch()).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := p.Acquire(t.Context(), "eval-b", time.Minute, AcquireArgs{})
	if !errors.Is(err, ErrNoExecutor) || errors.Is(err, ErrPoolMissing) {
		t.Fatalf("acquire with the marker lost alone: %v, want ErrNoExecutor and not ErrPoolMissing", err)
	}
	if epoch, err := p.Epoch(t.Context()); err != nil || epoch == "" {
		t.Fatalf("Epoch = %q, %v; want one written again", epoch, err)
	}
}

// The leases marker lost alone is reported, and written again by the next
// Migrate (a worker's tick, a handle's first change), so that older
// releases stay refused.
func TestLostLeasesMarkerIsWrittenAgain(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	if err := b.client.Del(t.Context(), p.keys.Leases()).Err(); err != nil {
		t.Fatal(err)
	}
	if vs := checkLines(t, p); len(vs) != 1 || !strings.Contains(vs[0], "leases marker is missing") {
		t.Fatalf("Check = %q, want the missing marker", vs)
	}
	if _, err := p.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if typ := b.client.Type(t.Context(), p.keys.Leases()).Val(); typ != "string" {
		t.Fatalf("leases is a %s after Migrate, want the marker string", typ)
	}
	assertWhole(t, p, "http://e1")
}

// A lost deadlines index, then `pool add`: the lease in the record keeps
// the executor leased.
func TestRegisterAfterTheDeadlinesAreGone(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1", "http://e2")
	held := acquire(t, p, "eval-a", time.Minute)
	if err := b.client.Del(t.Context(), p.keys.Deadlines()).Err(); err != nil {
		t.Fatal(err)
	}
	if regs, err := p.Register(t.Context(), Executor{URL: held.URL}); err != nil || regs[0].Outcome != AlreadyRegistered {
		t.Fatalf("Register of the leased %s = %+v, %v; want already registered", held.URL, regs, err)
	}
	other := acquire(t, p, "eval-b", time.Minute)
	if other.URL == held.URL {
		t.Fatalf("eval-b got %s, which eval-a holds", other.URL)
	}
	if _, err := p.Acquire(t.Context(), "eval-c", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("a third acquire on two executors: %v, want ErrNoExecutor", err)
	}
}

// A lost label index or label count is reported, and rebuilt from the
// records by Rebuild (pool check --repair): labelled evals are served again.
func TestRebuildRepairsLostLabelKeys(t *testing.T) {
	t.Parallel()
	gpu := AcquireArgs{Require: map[string]string{"gpu": "a100"}}
	for _, key := range []string{"labelled:gpu=a100", "labelled"} {
		t.Run(key, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t)
			if _, err := p.Register(t.Context(), Executor{URL: "http://g1", Labels: map[string]string{"gpu": "a100"}}, Executor{URL: "http://p1"}); err != nil {
				t.Fatal(err)
			}
			b.client.Del(t.Context(), "evalpool:{"+p.Name()+"}:"+key)
			if vs := checkLines(t, p); len(vs) == 0 {
				t.Fatal("Check saw nothing lost")
			}
			if l, err := p.Acquire(t.Context(), "eval-a", time.Minute, gpu); err == nil {
				t.Fatalf("acquire requiring gpu=a100 got %s with its index lost", l.URL)
			}
			if _, err := p.Rebuild(t.Context()); err != nil {
				t.Fatal(err)
			}
			assertWhole(t, p, "http://g1", "http://p1")
			if l, err := p.Acquire(t.Context(), "eval-a", time.Minute, gpu); err != nil || l.URL != "http://g1" {
				t.Fatalf("acquire requiring gpu=a100 after Rebuild = %+v, %v; want http://g1", l, err)
			}
		})
	}
}

// A lost executors hash under a quarantined and a draining executor, then
// `pool add`: the quarantine holds (its schedule says so), the drain is
// cancelled as a pool add cancels one, and no index is left stale.
func TestRegisterAfterTheExecutorsHashIsGoneKeepsTheQuarantine(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://a", "http://b", "http://c")
	held := acquire(t, p, "eval-a", time.Second)
	if out, err := p.Deregister(t.Context(), held.URL); err != nil || out != Draining {
		t.Fatalf("Deregister = %s, %v", out, err)
	}
	out := "http://b"
	if held.URL == out {
		out = "http://c"
	}
	if _, err := p.Quarantine(t.Context(), out, ReasonOperator); err != nil {
		t.Fatal(err)
	}
	b.client.Del(t.Context(), p.keys.Executors())
	register(t, p, "http://a", "http://b", "http://c")
	for i := range 2 {
		if l, err := p.Acquire(t.Context(), fmt.Sprintf("eval-%d", i), time.Minute, AcquireArgs{}); err == nil && l.URL == out {
			t.Fatalf("acquire got the quarantined %s", out)
		}
	}
	waitReclaimable(t, p, held)
	if _, err := p.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	if vs := checkLines(t, p); len(vs) > 0 {
		t.Fatalf("Check = %q", vs)
	}
}

// A leased executor that is also quarantined counts once in the reaper's
// test for lost executors, so that it cannot hide one.
func TestReapFindsALostExecutorBesideAQuarantinedLease(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://a", "http://b", "http://c", "http://d")
	for _, eval := range []string{"eval-a", "eval-b"} {
		l := acquire(t, p, eval, time.Minute)
		if _, err := p.Quarantine(t.Context(), l.URL, ReasonOperator); err != nil {
			t.Fatal(err)
		}
	}
	b.client.Del(t.Context(), p.keys.Available())
	if _, err := p.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	if vs := checkLines(t, p); len(vs) > 0 {
		t.Fatalf("Check after the reap = %q", vs)
	}
	acquire(t, p, "eval-c", time.Minute)
}

// A registered executor that is neither available nor leased is lost;
// registering it again repairs it.
func TestRegisterRepairsALostExecutor(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	if err := b.client.Del(t.Context(), p.keys.Available()).Err(); err != nil {
		t.Fatal(err)
	}
	vs, err := p.Check(t.Context())
	if err != nil || len(vs) != 1 || vs[0].Invariant != 4 {
		t.Fatalf("Check = %v, %v; want the lost executor", vs, err)
	}
	regs, err := p.Register(t.Context(), Executor{URL: "http://e1"})
	if err != nil || regs[0].Outcome != Repaired {
		t.Fatalf("Register = %+v, %v; want repaired", regs, err)
	}
	assertWhole(t, p, "http://e1")
}

// The executors hash deleted under leased executors, their leases with
// it: the operator's repairs (register again, reap) leave no stale entry in
// the holders index behind, so that Check is clean again, not failing for
// ever.
func TestRepairsDropStaleHolders(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1", "http://e2")
	acquire(t, p, "eval-a", time.Second)
	last := acquire(t, p, "eval-b", time.Second)
	if err := b.client.Del(t.Context(), p.keys.Executors()).Err(); err != nil {
		t.Fatal(err)
	}
	regs, err := p.Register(t.Context(), Executor{URL: "http://e1"}, Executor{URL: "http://e2"})
	if err != nil || regs[0].Outcome != Added || regs[1].Outcome != Added {
		t.Fatalf("Register = %+v, %v; want both added", regs, err)
	}
	waitReclaimable(t, p, last)
	for range 2 { // the reclaims, then the holders
		if _, err := p.Reap(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	assertWhole(t, p, "http://e1", "http://e2")
	if n := b.client.HLen(t.Context(), p.keys.Holders()).Val(); n != 0 {
		t.Fatalf("%d stale holders entries left", n)
	}
}

// Unreadable records are shown and reported, never a panic or a script
// error.
func TestStatusReportsCorruptRecords(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1", "http://e2")
	acquire(t, p, "eval-a", time.Minute)
	st, err := p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	leased := st.Executors[slices.IndexFunc(st.Executors, func(e ExecutorStatus) bool { return e.State == StateLeased })].URL
	idle := "http://e1"
	if leased == idle {
		idle = "http://e2"
	}
	if err := writeField(t.Context(), b.client, p.keys, leased, "lease", `"not a lease"`); err != nil {
		t.Fatal(err)
	}
	b.client.HSet(t.Context(), p.keys.Executors(), idle, "[1,2")
	st, err = p.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Executors {
		if e.Corrupt == "" {
			t.Errorf("%s: corrupt record not reported: %+v", e.URL, e)
		}
	}
	vs, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, v.String())
	}
	joined := strings.Join(got, "; ")
	if !strings.Contains(joined, "unreadable lease record") || !strings.Contains(joined, "unreadable executor record") {
		t.Errorf("Check = %q; want both unreadable records", got)
	}
	// The scripts go on: the idle executor can be leased and released.
	l := acquire(t, p, "eval-b", time.Minute)
	release(t, p, l, Released)
}

// A pool whose keys vanished (FLUSHALL, eviction) says so: Acquire fails with
// ErrPoolMissing (which is also ErrNoExecutor, so waiters wait), Check
// reports the missing marker, and the next Register starts a new epoch.
func TestLostPoolIsNoticed(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	epoch, err := p.Epoch(t.Context())
	if err != nil || epoch == "" {
		t.Fatalf("Epoch = %q, %v; want one after Register", epoch, err)
	}
	if err := b.client.Del(t.Context(), p.Keys()...).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = p.Acquire(t.Context(), "eval-a", time.Minute, AcquireArgs{})
	if !errors.Is(err, ErrPoolMissing) || !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("acquire on a lost pool: err = %v, want ErrPoolMissing and ErrNoExecutor", err)
	}
	vs, err := p.Check(t.Context())
	if err != nil || len(vs) != 1 || vs[0].Invariant != 5 {
		t.Fatalf("Check = %v, %v; want the missing marker", vs, err)
	}
	register(t, p, "http://e1")
	again, err := p.Epoch(t.Context())
	if err != nil || again == "" || again == epoch {
		t.Fatalf("epoch after re-register = %q (was %q), %v; want a new one", again, epoch, err)
	}
	assertWhole(t, p, "http://e1")
}

// An expired lease is reclaimed only once the grace has passed since its
// deadline: until then a lease-aware executor may still be stopping the old
// holder's eval.
func TestExpiredLeaseWaitsForTheGrace(t *testing.T) {
	t.Parallel()
	const grace = 500 * time.Millisecond
	p, b := setupWith(t, Settings{LeaseGrace: grace}, "http://e1")
	old := acquire(t, p, "eval-a", 10*time.Millisecond)
	for {
		l, err := p.Acquire(t.Context(), "eval-b", time.Minute, AcquireArgs{})
		now, terr := b.client.Time(t.Context()).Result()
		if terr != nil {
			t.Fatal(terr)
		}
		if err == nil {
			if now.Before(old.Deadline.Add(grace)) {
				t.Fatalf("eval-b got the executor %s after the deadline, within the %s grace", now.Sub(old.Deadline), grace)
			}
			release(t, p, l, Released)
			break
		}
		if !errors.Is(err, ErrNoExecutor) {
			t.Fatal(err)
		}
		if now.After(old.Deadline.Add(grace + 2*time.Second)) {
			t.Fatal("the expired lease was never reclaimed")
		}
		select {
		case <-t.Context().Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	if n, err := p.Reap(context.WithoutCancel(t.Context())); err != nil || n != 0 {
		t.Fatalf("Reap = %d, %v; want nothing left", n, err)
	}
	assertWhole(t, p, "http://e1")
}

// One executor in two pools would be leased by both: a pool refuses an
// executor that another pool holds, and takes it once that pool let it go.
func TestRegisterRefusesAnExecutorOfAnotherPool(t *testing.T) {
	t.Parallel()
	a, b := setup(t)
	other := poolOn(t, b.client, evaltest.Pool(t, b.client))
	id := "instance-of-" + a.Name()
	if regs, err := a.Register(t.Context(), Executor{URL: "http://127.0.0.1:17401", InstanceID: id}); err != nil || regs[0].Outcome != Added {
		t.Fatalf("Register in the first pool = %+v, %v", regs, err)
	}
	regs, err := other.Register(t.Context(), Executor{URL: "http://localhost:17401", InstanceID: id})
	if err != nil || regs[0].Outcome != Duplicate || regs[0].DuplicatePool != a.Name() || regs[0].DuplicateOf != "http://127.0.0.1:17401" {
		t.Fatalf("Register in the second pool = %+v, %v; want refused as the first pool's", regs, err)
	}
	if c, err := other.Counts(t.Context()); err != nil || c.Registered != 0 {
		t.Fatalf("the refused executor is in the second pool: %+v, %v", c, err)
	}
	if _, err := a.Deregister(t.Context(), "http://127.0.0.1:17401"); err != nil {
		t.Fatal(err)
	}
	regs, err = other.Register(t.Context(), Executor{URL: "http://localhost:17401", InstanceID: id})
	if err != nil || regs[0].Outcome != Added {
		t.Fatalf("Register once the first pool let it go = %+v, %v; want added", regs, err)
	}
	if regs, err := a.Register(t.Context(), Executor{URL: "http://127.0.0.1:17401", InstanceID: id}); err != nil || regs[0].Outcome != Duplicate || regs[0].DuplicatePool != other.Name() {
		t.Fatalf("Register back in the first pool = %+v, %v; want refused as the second pool's", regs, err)
	}
	assertWhole(t, other, "http://localhost:17401")
}

// A fence that is not a number never lowers a grant's fence: one in the
// pool-wide counter older releases left is reported by Check and passed
// over for the record's, above which the next grant is; one in an
// executor's record is replaced by the next grant with Redis's clock, the
// floor when the last fence is unknown. Corruption that would hold an
// executor for ever is repaired by the reaper.
func TestCorruptionLosesNoExecutor(t *testing.T) {
	t.Parallel()
	t.Run("a fence that is not an integer", func(t *testing.T) {
		t.Parallel()
		p, b := setup(t, "http://e1")
		first := acquire(t, p, "eval-a", time.Minute)
		release(t, p, first, Released)
		last := first.Fence
		for _, junk := range []string{"abc", "1.5", "9223372036854775807"} {
			b.client.Set(t.Context(), p.keys.Fence(), junk, 0)
			want := fmt.Sprintf("invariant 10: %s holds %q, not an integer of at most 18 digits: not written by evalpool", p.keys.Fence(), junk)
			if got := checkLines(t, p); !slices.Equal(got, []string{want}) {
				t.Fatalf("Check over fence %q = %q, want %q", junk, got, want)
			}
			l := acquire(t, p, "eval-counter-"+junk, time.Minute)
			if l.Fence <= last {
				t.Fatalf("acquire over counter %q granted fence %d, not above the record's %d", junk, l.Fence, last)
			}
			release(t, p, l, Released)
			if err := writeField(t.Context(), b.client, p.keys, "http://e1", "fence", strconv.Quote(junk)); err != nil {
				t.Fatal(err)
			}
			floor := b.client.Time(t.Context()).Val().UnixMilli()
			if l = acquire(t, p, "eval-record-"+junk, time.Minute); l.Fence < floor {
				t.Fatalf("acquire over a record's fence %q granted fence %d, below Redis's clock %d", junk, l.Fence, floor)
			}
			last = l.Fence
			release(t, p, l, Released)
		}
		b.client.Del(t.Context(), p.keys.Fence())
		assertWhole(t, p, "http://e1")
	})
	// A NaN or an infinity another program wrote is read by Redis's JSON
	// decoder but not written again: the record is written anew, and the
	// executor is granted, never dropped from the index half way.
	t.Run("a record JSON cannot write again", func(t *testing.T) {
		t.Parallel()
		p, b := setup(t, "http://e1")
		for i, junk := range []string{`{"added_at":1,"passed":nan}`, `{"added_at":1,"fence":-1e999}`} {
			if err := b.client.HSet(t.Context(), p.keys.Executors(), "http://e1", junk).Err(); err != nil {
				t.Fatal(err)
			}
			l, err := p.Acquire(t.Context(), fmt.Sprint("eval-", i), time.Minute, AcquireArgs{})
			if err != nil || l.URL != "http://e1" {
				t.Fatalf("acquire over the record %s: %+v, %v; want http://e1", junk, l, err)
			}
			release(t, p, l, Released)
			assertWhole(t, p, "http://e1")
		}
	})
	t.Run("a lease whose deadline was deleted", func(t *testing.T) {
		t.Parallel()
		p, b := setup(t, "http://e1")
		held := acquire(t, p, "eval-a", time.Second)
		b.client.Del(t.Context(), p.keys.Deadlines())
		if n, err := p.Reap(t.Context()); err != nil || n != 0 {
			t.Fatalf("Reap = %d, %v; want the lease given a deadline, not reclaimed", n, err)
		}
		// Its TTL from now: its holder, alive, still holds it.
		if _, err := p.Renew(t.Context(), held, time.Second); err != nil {
			t.Fatalf("renew after the repair: %v", err)
		}
		if _, err := p.Acquire(t.Context(), "eval-b", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
			t.Fatalf("acquire while eval-a holds the one executor: %v, want ErrNoExecutor", err)
		}
		evaltest.Eventually(t, 10*time.Second, "the lease without a deadline was never reclaimed", func() bool {
			n, err := p.Reap(t.Context())
			return err == nil && n == 1
		})
		assertWhole(t, p, "http://e1")
	})
	// Lost indexes leave executors in none: the reaper puts each back
	// where its record says it belongs, without a pool add.
	for _, tt := range []struct {
		name, key string
		prepare   func(t *testing.T, p *Pool)
		check     func(t *testing.T, p *Pool)
	}{
		{"the available index", "available", nil, func(t *testing.T, p *Pool) { assertWhole(t, p, "http://e1") }},
		{"the quarantine schedule", "quarantine", func(t *testing.T, p *Pool) {
			if _, err := p.Quarantine(t.Context(), "http://e1", ReasonOperator); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, p *Pool) {
			if vs := checkLines(t, p); len(vs) > 0 {
				t.Fatalf("Check = %q", vs)
			}
			if _, err := p.Acquire(t.Context(), "eval-x", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
				t.Fatalf("acquire of the quarantined executor: %v, want ErrNoExecutor", err)
			}
		}},
	} {
		t.Run("a lost "+tt.key, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			if tt.prepare != nil {
				tt.prepare(t, p)
			}
			b.client.Del(t.Context(), "evalpool:{"+p.Name()+"}:"+tt.key)
			if vs := checkLines(t, p); len(vs) == 0 {
				t.Fatal("Check saw nothing lost")
			}
			if _, err := p.Reap(t.Context()); err != nil {
				t.Fatal(err)
			}
			tt.check(t, p)
		})
	}
}
