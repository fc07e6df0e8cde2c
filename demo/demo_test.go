package demo

import (
	"bytes"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

func TestDemo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		redis func(t *testing.T) string
	}{
		{"embedded Redis", func(*testing.T) string { return "" }},
		{"real Redis", func(t *testing.T) string { return evaltest.StartT(t, evaltest.Options{}).URL() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := Start(t.Context(), Options{RedisURL: tt.redis(t), Evals: 80, Executors: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := d.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			}()
			rep, err := d.Run(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			rep.Print(&out)
			t.Log("\n" + out.String())
			if !rep.OK() {
				t.Fatalf("the promise broke:\n%s", out.String())
			}
			if rep.Passed+rep.Failed+rep.Errored != 80 {
				t.Fatalf("%d + %d + %d evals accounted for, want 80", rep.Passed, rep.Failed, rep.Errored)
			}
			if rep.DuplicateReleases == 0 || rep.LateDuplicates == 0 {
				t.Fatalf("the demo exercised no second release: %+v", rep)
			}
			// The cleanups' second paths are duplicates; the zombie's late
			// replays are each a double release, the alert.
			if rep.DoubleReleases != rep.LateDuplicates {
				t.Fatalf("%d double releases for %d late replays by the zombie", rep.DoubleReleases, rep.LateDuplicates)
			}
			// At least one lease per eval, at most one per attempt (a retry may
			// re-enter its live lease).
			if r := rep.Releases[pool.Released]; r < rep.Evals || r > rep.Attempts {
				t.Fatalf("%d releases freed an executor for %d evals in %d attempts", r, rep.Evals, rep.Attempts)
			}
			if !strings.Contains(out.String(), "executors lost:   0") || !strings.Contains(out.String(), "pool check:       ok") {
				t.Fatalf("report:\n%s", out.String())
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{{Executors: -1}, {Evals: -1}, {FailRate: 1}, {FailRate: -0.5}, {Latency: -1}} {
		if _, err := Start(t.Context(), o); err == nil {
			t.Errorf("Start(%+v) accepted", o)
		}
	}
}
