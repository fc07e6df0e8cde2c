package pool

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// olderRelease is the last release written before the pool's epoch marker.
const olderRelease = "89b3e49"

// A pool written by the release before the epoch marker, with leases in
// flight, is adopted in place by this release's first acquire: no executor
// lost, none handed out twice, the old leases kept (re-entered by their
// evals, reclaimed once expired), and labels still served.
func TestAdoptsAPoolOfTheReleaseBeforeTheMarker(t *testing.T) {
	t.Parallel()
	bin := evaltest.Release(t, olderRelease)
	p, _ := setupWith(t, Options{LeaseGrace: testGrace})
	old := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"--redis", evaltest.URL(t), "--pool", p.Name()}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", olderRelease, strings.Join(args, " "), err, out)
		}
		return out
	}
	old("pool", "add", "http://e1", "http://e2")
	old("pool", "add", "http://e3", "http://e4", "--label", "gpu=a100")
	var held []Lease // the old release's leases in flight
	for _, eval := range []string{"old-long", "old-short"} {
		ttl := map[string]string{"old-long": "1m", "old-short": "1s"}[eval]
		var l Lease
		if err := json.Unmarshal(old("pool", "acquire", "--eval", eval, "--ttl", ttl, "--json"), &l); err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	// Check names the older release (and the label sets' indexes, which
	// that release did not keep).
	if vs := checkLines(t, p); len(vs) == 0 || !strings.Contains(vs[0], "4 executors are registered: written by a release before the marker") {
		t.Fatalf("Check before adoption = %q, want the missing marker of an older release", vs)
	}

	// The third and fourth executors go to new evals, one of them requiring
	// the label only the old release's records carried.
	a100, err := p.AcquireWith(t.Context(), "new-a100", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}})
	if err != nil {
		t.Fatalf("acquire requiring gpu=a100 after adoption: %v", err)
	}
	plain := acquire(t, p, "new-plain", time.Minute)
	leased := []string{held[0].URL, held[1].URL, a100.URL, plain.URL}
	slices.Sort(leased)
	if !slices.Equal(leased, []string{"http://e1", "http://e2", "http://e3", "http://e4"}) {
		t.Fatalf("leased %v after adoption: an executor handed out twice", leased)
	}
	if a100.URL != "http://e3" && a100.URL != "http://e4" {
		t.Fatalf("the eval requiring gpu=a100 got %s", a100.URL)
	}
	if l, err := p.Acquire(t.Context(), "another", time.Minute); err == nil {
		t.Fatalf("a fifth acquire got %s, held by %v", l.URL, leased)
	}
	// The old release's lease is its eval's: re-entered under a higher fence.
	again := acquire(t, p, "old-long", time.Minute)
	if again.URL != held[0].URL || !again.Reentered || again.Fence <= held[0].Fence {
		t.Fatalf("re-entry of the old lease = %+v, held %+v", again, held[0])
	}
	// The short one expires and comes back.
	evaltest.Eventually(t, 10*time.Second, "the old release's expired lease was never reclaimed", func() bool {
		n, err := p.Reap(t.Context())
		return err == nil && n == 1
	})
	for _, l := range []Lease{again, a100, plain} {
		if _, err := p.Release(t.Context(), l, "test"); err != nil {
			t.Fatal(err)
		}
	}
	assertWhole(t, p, "http://e1", "http://e2", "http://e3", "http://e4")
	if n, err := p.Adopt(t.Context()); err != nil || n != 0 {
		t.Fatalf("Adopt of an adopted pool = %d, %v; want nothing to do", n, err)
	}
}
