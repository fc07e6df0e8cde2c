package pool

import (
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// A pool written by an older release, with leases in flight, is migrated
// in place by this release's first change to it: no executor lost, none
// handed out twice, the old leases kept (re-entered by their evals,
// reclaimed once expired), a drain kept, and labels still served; the older
// release then refuses the pool. 89b3e49 wrote no epoch
// marker and no label index; 1932b7a kept an index per subset of an
// executor's labels; both kept the leases in a hash of their own.
func TestMigratesAPoolOfAnOlderRelease(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		release string
		add     []string // pool add's flags, as the release takes them
		check   string   // what Check says of the pool before it is migrated
	}{
		{"89b3e49", nil, "the pool was written by an older release, no epoch marker and its leases in a hash of their own (89b3e49 or older)"},
		{"1932b7a", []string{"--no-probe"}, "the pool was written by an older release, its leases in a hash of their own, its label sets indexed per subset (1932b7a or older)"},
	} {
		t.Run(tt.release, func(t *testing.T) {
			t.Parallel()
			bin := evaltest.Release(t, tt.release)
			p, _ := setupWith(t, Settings{LeaseGrace: testGrace})
			run := func(args ...string) ([]byte, error) {
				return exec.Command(bin, append([]string{"--redis", evaltest.URL(t), "--pool", p.Name()}, args...)...).CombinedOutput()
			}
			old := func(args ...string) []byte {
				t.Helper()
				out, err := run(args...)
				if err != nil {
					t.Fatalf("%s %s: %v\n%s", tt.release, strings.Join(args, " "), err, out)
				}
				return out
			}
			old(append([]string{"pool", "add", "http://e1", "http://e2"}, tt.add...)...)
			old(append([]string{"pool", "add", "http://e3", "http://e4", "--label", "gpu=a100", "--label", "zone=eu"}, tt.add...)...)
			var held []Lease // the old release's leases in flight
			for _, eval := range []string{"old-long", "old-short"} {
				ttl := map[string]string{"old-long": "1m", "old-short": "1s"}[eval]
				var l Lease
				if err := json.Unmarshal(old("pool", "acquire", "--eval", eval, "--ttl", ttl, "--json"), &l); err != nil {
					t.Fatal(err)
				}
				held = append(held, l)
			}
			// The short one's executor is removed while leased: it drains.
			old("pool", "remove", held[1].URL)
			if vs := checkLines(t, p); !slices.ContainsFunc(vs, func(v string) bool { return strings.Contains(v, tt.check) }) {
				t.Fatalf("Check before the migration = %q, want it to say %q", vs, tt.check)
			}

			// The first change through this release migrates: a quarantine
			// of the executor an old lease holds, and its return, leave
			// it leased.
			for _, op := range []func(context.Context, string) (QuarantineOutcome, error){
				func(ctx context.Context, u string) (QuarantineOutcome, error) {
					return p.Quarantine(ctx, u, ReasonOperator)
				},
				p.ReturnToService,
			} {
				if _, err := op(t.Context(), held[0].URL); err != nil {
					t.Fatal(err)
				}
			}
			if st, err := p.Status(t.Context()); err != nil || st.Executors[0].URL != held[0].URL || st.Executors[0].State != StateLeased {
				t.Fatalf("after a quarantine and its return, status = %+v, %v; want %s leased", st, err, held[0].URL)
			}

			// The third and fourth executors go to new evals, one of them
			// requiring a label of theirs.
			a100, err := p.Acquire(t.Context(), "new-a100", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}})
			if err != nil {
				t.Fatalf("acquire requiring gpu=a100 after the migration: %v", err)
			}
			plain := acquire(t, p, "new-plain", time.Minute)
			leased := []string{held[0].URL, held[1].URL, a100.URL, plain.URL}
			slices.Sort(leased)
			if !slices.Equal(leased, []string{"http://e1", "http://e2", "http://e3", "http://e4"}) {
				t.Fatalf("leased %v after the migration: an executor handed out twice", leased)
			}
			if a100.URL != "http://e3" && a100.URL != "http://e4" {
				t.Fatalf("the eval requiring gpu=a100 got %s", a100.URL)
			}
			if l, err := p.Acquire(t.Context(), "another", time.Minute, AcquireArgs{}); err == nil {
				t.Fatalf("a fifth acquire got %s, held by %v", l.URL, leased)
			}
			// The old release's lease is its eval's: re-entered under a
			// higher fence.
			again := acquire(t, p, "old-long", time.Minute)
			if again.URL != held[0].URL || !again.Reentered || again.Fence <= held[0].Fence {
				t.Fatalf("re-entry of the old lease = %+v, held %+v", again, held[0])
			}
			// The short one expires, and its executor leaves the pool.
			evaltest.Eventually(t, 10*time.Second, "the old release's expired lease was never reclaimed", func() bool {
				n, err := p.Reap(t.Context())
				return err == nil && n == 1
			})
			for _, l := range []Lease{again, a100, plain} {
				release(t, p, l, Released)
			}
			whole := []string{"http://e1", "http://e3", "http://e4"}
			assertWhole(t, p, whole...)
			if m, err := p.Migrate(t.Context()); err != nil || m.Executors != 0 || m.Epoch == "" {
				t.Fatalf("Migrate of a migrated pool = %+v, %v; want nothing to do, and its epoch", m, err)
			}
			// The older release refuses the migrated pool, in one line, and
			// changes nothing: its scripts meet the leases key, a string
			// now, before they write (89b3e49 names it; 1932b7a says foreign
			// data, and its pool check names it).
			for _, args := range [][]string{{"pool", "acquire", "--eval", "old-again"}, append([]string{"pool", "add", "http://e2", "http://e5"}, tt.add...)} {
				out, err := run(args...)
				if err == nil || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 || !strings.Contains(string(out), "leases") && !strings.Contains(string(out), "foreign data") {
					t.Errorf("%s %s on the migrated pool = %v, %q; want one line of refusal", tt.release, strings.Join(args, " "), err, out)
				}
			}
			assertWhole(t, p, whole...)
			if tt.release == "1932b7a" {
				// Its pool label is not refused (its script meets no key
				// of the new layout's): it relabels e3 in the record and
				// in its own indexes, not in the new ones. An acquire that
				// requires e3's old labels must not take it from the index
				// it was left in.
				old("pool", "label", "http://e3", "gpu=h100")
				var ls []Lease
				for _, eval := range []string{"x1", "x2", "x3"} {
					ls = append(ls, acquire(t, p, eval, time.Minute))
				}
				if l, err := p.Acquire(t.Context(), "x-a100", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}}); err == nil {
					t.Fatalf("acquire requiring gpu=a100 got %s, leased to one of %v", l.URL, ls)
				}
				for _, l := range ls {
					release(t, p, l, Released)
				}
				if m, err := p.Migrate(t.Context()); err != nil || m.Executors == 0 || m.Epoch == "" {
					t.Fatalf("Migrate after the older release's label = %+v, %v; want its indexes rebuilt, and its epoch", m, err)
				}
				assertWhole(t, p, whole...)
			}
			// The older release's subset indexes are gone with its counts.
			if n, err := p.client.Exists(t.Context(), p.keys.OlderLabelSets(), "evalpool:{"+p.Name()+"}:available:gpu=a100").Result(); err != nil || n != 0 {
				t.Fatalf("%d keys of the older layout left, %v", n, err)
			}
		})
	}
}
