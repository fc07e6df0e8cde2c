package pool

import (
	"errors"
	"testing"

	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// TestSettingsAreThePools: settings written through one handle are what
// every other handle on the pool (another process) applies, read back as
// written; a pool whose settings are lost applies the defaults.
func TestSettingsAreThePools(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	other := poolOn(t, b.client, p.Name())
	want := Settings{LeaseGrace: 300 * time.Millisecond, QuarantineAfter: 1, QuarantineFailRate: 0.75, ProbeInterval: 5 * time.Second, ProbeMaxInterval: 20 * time.Second}
	if err := p.Configure(t.Context(), want); err != nil {
		t.Fatal(err)
	}
	if got, err := other.Settings(t.Context()); err != nil || got != want {
		t.Fatalf("Settings = %+v, %v; want %+v", got, err, want)
	}
	// The other handle's release applies the threshold of 1.
	l, err := other.Acquire(t.Context(), "e", time.Minute, AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := other.Release(t.Context(), l, ReleaseArgs{Path: "test", Verdict: VerdictUnavailable})
	if err != nil || r.Quarantined != ReasonUnavailable {
		t.Fatalf("release = %+v, %v; want quarantined after 1 unavailable", r, err)
	}
	if err := b.client.Del(t.Context(), p.keys.Settings()).Err(); err != nil {
		t.Fatal(err)
	}
	defaults := Settings{LeaseGrace: DefaultLeaseGrace, QuarantineAfter: DefaultQuarantine, ProbeInterval: DefaultProbe, ProbeMaxInterval: DefaultProbeMax}
	if got, err := other.Settings(t.Context()); err != nil || got != defaults {
		t.Fatalf("lost settings read as %+v, %v; want the defaults %+v", got, err, defaults)
	}
	assertClean(t, p)
}

// TestSettingsNever: a quarantine turned off reads back as off, and no
// count of unavailable calls takes an executor out.
func TestSettingsNever(t *testing.T) {
	t.Parallel()
	p, _ := setupWith(t, Settings{LeaseGrace: testGrace, QuarantineAfter: -1}, "http://e1")
	if s, err := p.Settings(t.Context()); err != nil || s.QuarantineAfter != -1 {
		t.Fatalf("Settings = %+v, %v; want QuarantineAfter -1 (never)", s, err)
	}
	for range 2 * DefaultQuarantine {
		l, err := p.Acquire(t.Context(), "e", time.Minute, AcquireArgs{})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "test", Verdict: VerdictUnavailable}); err != nil || r.Quarantined != "" {
			t.Fatalf("release = %+v, %v; want no quarantine", r, err)
		}
	}
}

// TestSettingsValidate: settings no script could apply are refused whole,
// and the pool's stay as they were.
func TestSettingsValidate(t *testing.T) {
	t.Parallel()
	p, _ := setup(t)
	for _, s := range []Settings{
		{LeaseGrace: -time.Second},
		{LeaseGrace: 1500 * time.Microsecond},
		{QuarantineFailRate: 1.5},
		{QuarantineFailRate: -0.1},
		{ProbeInterval: -time.Second},
		{ProbeMaxInterval: time.Microsecond},
	} {
		if err := p.Configure(t.Context(), s); !errors.Is(err, ErrInvalid) {
			t.Errorf("Configure(%+v) = %v, want ErrInvalid", s, err)
		}
	}
	if s, err := p.Settings(t.Context()); err != nil || s.LeaseGrace != testGrace {
		t.Fatalf("Settings = %+v, %v; want the test's, unchanged", s, err)
	}
}

// TestSettingsForeignValues: values pool config never writes (another
// program's, a hand-typed HSET) are applied as the defaults, never as
// written, and pool check names them. A negative grace, applied, would
// reclaim a live lease and hand its executor to a second eval.
func TestSettingsForeignValues(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	ctx := t.Context()
	if err := b.client.HSet(ctx, p.keys.Settings(), fieldGrace, "-3600000", fieldFailRate, "2", fieldProbe, "nan", fieldAfter, "inf", "colour", "blue").Err(); err != nil {
		t.Fatal(err)
	}
	for _, grace := range []string{"1e308", "9223372036854775807", "0x7fffffffffffffff", "99999999999999", "1.5"} {
		if v, ok := settingValue(fieldGrace, grace); ok {
			t.Errorf("grace %q read as %g, want refused", grace, v)
		}
	}
	held := acquire(t, p, "holder", time.Minute)
	if n, err := p.Reap(ctx); err != nil || n != 0 {
		t.Fatalf("Reap = %d, %v; a live lease must not be reclaimed, whatever grace is written", n, err)
	}
	if l, err := p.Acquire(ctx, "second", time.Minute, AcquireArgs{}); !errors.Is(err, ErrNoExecutor) {
		t.Fatalf("a second eval acquired %+v, %v while %s holds the only executor", l, err, held.EvalID)
	}
	defaults := Settings{LeaseGrace: DefaultLeaseGrace, QuarantineAfter: DefaultQuarantine, ProbeInterval: DefaultProbe, ProbeMaxInterval: DefaultProbeMax}
	if s, err := p.Settings(ctx); err != nil || s != defaults {
		t.Fatalf("Settings = %+v, %v; want the defaults %+v", s, err, defaults)
	}
	vs, err := p.Check(ctx)
	if err != nil || len(vs) != 5 {
		t.Fatalf("Check = %v, %v; want the 5 foreign values named", vs, err)
	}
	for _, v := range vs {
		if v.Invariant != invariantTypes {
			t.Errorf("violation %s, want invariant %d", v, invariantTypes)
		}
	}
}

// TestForeignGraceIsTheDefault: a grace written by hand that pool config
// would not write, whether Lua would read it or not, is applied as the
// default: a lease is not reclaimed before the default grace (0x10 read as
// 16 ms), and is reclaimed after it (1e308 read as written kept a dead
// holder's executor for ever); pool check names it.
func TestForeignGraceIsTheDefault(t *testing.T) {
	t.Parallel()
	for _, grace := range []string{"0x10", "1e308", "99999999999999", "1.5"} {
		t.Run(grace, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			ctx := t.Context()
			if err := b.client.HSet(ctx, p.keys.Settings(), fieldGrace, grace).Err(); err != nil {
				t.Fatal(err)
			}
			l := acquire(t, p, "dead-holder", 100*time.Millisecond)
			evaltest.Eventually(t, 5*time.Second, "past the deadline", func() bool {
				now, err := b.client.Time(ctx).Result()
				return err == nil && now.After(l.Deadline.Add(300*time.Millisecond))
			})
			if n, err := p.Reap(ctx); err != nil || n != 0 {
				t.Fatalf("Reap within the default grace = %d, %v; want 0", n, err)
			}
			waitReclaimable(t, p, l)
			if n, err := p.Reap(ctx); err != nil || n != 1 {
				t.Fatalf("Reap past the default grace = %d, %v; want the dead holder's lease reclaimed", n, err)
			}
			if vs, err := p.Check(ctx); err != nil || len(vs) != 1 || vs[0].Invariant != invariantTypes {
				t.Fatalf("Check = %v, %v; want the grace named", vs, err)
			}
		})
	}
}
