package run_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
	"github.com/redis/go-redis/v9"
)

// liveBundle is a store that keeps its tallies (live) and one that reads
// each run whole (whole), on a Redis of the test's own, so that what a
// summary reads shows in its byte counts.
type liveBundle struct {
	server *evaltest.Server
	// client is the stores'.
	client      *redis.Client
	live, whole *run.Store
}

func setupLive(t *testing.T) *liveBundle {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	c := srv.Client(t)
	return &liveBundle{server: srv, client: c, live: run.NewStore(c, run.Options{}), whole: run.NewStore(c, run.Options{LiveBytes: -1})}
}

// same fails the test unless the live store sums up name (against
// another run, if set) as a read of the whole run does.
func (b *liveBundle) same(t *testing.T, step, name, against string) run.Summary {
	t.Helper()
	got, err := b.live.Summarize(t.Context(), name, against)
	if err != nil {
		t.Fatalf("%s: live: %v", step, err)
	}
	want, err := b.whole.Summarize(t.Context(), name, against)
	if err != nil {
		t.Fatalf("%s: whole: %v", step, err)
	}
	// The share's time over the last minute moves between the two reads:
	// it is read apart from the tally, whole each time.
	got.Share.HeldLastMinute, want.Share.HeldLastMinute = 0, 0
	if !near(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("%s: live summary\n%s\nwant (read whole)\n%s", step, g, w)
	}
	return got
}

// TestSummaryLive: a run summed up as it moves, by a store that adds what
// ended since each time, sums up as a read of the whole run: evals end
// (with scores, metrics, groups, epochs), are cancelled, retried (their
// ends taken back, ended again before or after the next look), compared
// with another run that moves too.
func TestSummaryLive(t *testing.T) {
	t.Parallel()
	for _, epochs := range []int{1, 3} {
		t.Run(fmt.Sprint("epochs ", epochs), func(t *testing.T) {
			t.Parallel()
			b := setupLive(t)
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 0))
			ctx := t.Context()
			names := []string{"live-a", "live-b"}
			var evalKeys []string
			for i := range 40 {
				for e := range epochs {
					key := fmt.Sprint("k", i)
					if epochs > 1 {
						key = run.EpochKey(key, e+1)
					}
					evalKeys = append(evalKeys, key)
				}
			}
			for _, name := range names {
				if err := b.live.Create(ctx, run.Run{Name: name, Pool: "default", CreatedAt: time.Now(), Keys: evalKeys, Epochs: epochs}); err != nil {
					t.Fatal(err)
				}
			}
			record := func(i int) run.Record {
				rec := run.Record{Key: evalKeys[i], Status: []string{run.Passed, run.Passed, run.Failed, run.Errored}[rng.IntN(4)], Retries: rng.IntN(3),
					Duration: float64(rng.IntN(100)) / 10, Executor: "http://e", Error: "no"}
				if epochs > 1 {
					rec.Epoch = i%epochs + 1
				}
				if g := rng.IntN(4); g > 0 {
					rec.Group = fmt.Sprint("g", i/epochs%5)
				}
				if rec.Status != run.Errored || rng.IntN(4) == 0 {
					rec.Score = score(float64(rng.IntN(11)) / 10)
				}
				if rng.IntN(2) == 0 {
					rec.Metrics = map[string]float64{"f1": rng.Float64(), "steps": float64(rng.IntN(50))}
				}
				return rec
			}
			for step := range 60 {
				name := names[rng.IntN(2)]
				var did string
				switch a := rng.IntN(10); {
				case a < 6:
					for range 1 + rng.IntN(8) {
						if _, err := b.live.Finish(ctx, name, record(rng.IntN(len(evalKeys)))); err != nil {
							t.Fatal(err)
						}
					}
					did = "ends"
				case a < 7:
					from := rng.IntN(len(evalKeys))
					if _, err := b.live.FinishMany(ctx, name, evalKeys[from:min(from+5, len(evalKeys))], run.Record{Status: run.Cancelled}); err != nil {
						t.Fatal(err)
					}
					did = "cancel"
				default:
					r, err := b.live.Get(ctx, name)
					if err != nil {
						t.Fatal(err)
					}
					reopened, err := b.live.Reopen(ctx, r, r.Keys, run.Failed, run.Errored)
					if err != nil {
						t.Fatal(err)
					}
					// Some end again before the next look: the same count
					// of ends, other records.
					for _, key := range reopened[:rng.IntN(len(reopened)+1)] {
						rec := record(0)
						rec.Key = key
						if epochs > 1 {
							_, _ = fmt.Sscanf(key[len(key)-1:], "%d", &rec.Epoch)
						}
						if _, err := b.live.Finish(ctx, name, rec); err != nil {
							t.Fatal(err)
						}
					}
					did = fmt.Sprintf("retry of %d", len(reopened))
				}
				b.same(t, fmt.Sprintf("step %d (%s of %s)", step, did, name), names[0], "")
				b.same(t, fmt.Sprintf("step %d (%s of %s), compared", step, did, name), names[1], names[0])
			}
		})
	}
}

// TestSummaryLiveReadsWhatEnded: once a run of 20,000 ended evals was
// summed up, summing it up again reads what ended since, not the run:
// Redis sends a few KB, where the first summary took MBs, and a summary
// when none ended is one round trip.
func TestSummaryLiveReadsWhatEnded(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	ctx := t.Context()
	c := b.server.Client(t)
	const n = 20_000
	evalKeys := make([]string, n+10)
	for i := range evalKeys {
		evalKeys[i] = fmt.Sprint("k", i)
	}
	if err := b.live.Create(ctx, run.Run{Name: "big", Pool: "default", CreatedAt: time.Now(), Keys: evalKeys}); err != nil {
		t.Fatal(err)
	}
	finish := func(from, to int) {
		for i := from; i < to; i++ {
			rec := run.Record{Key: evalKeys[i], Status: run.Passed, Score: score(float64(i%10) / 10), Group: fmt.Sprint("g", i%300), Duration: 1.5,
				Metrics: map[string]float64{"f1": 0.5}, Output: json.RawMessage(`{"answer":"a long enough answer to weigh something"}`)}
			if _, err := b.live.Finish(ctx, "big", rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	finish(0, n)
	sent := func(what string, fn func()) float64 {
		before := evaltest.Info(t, c, "stats", "total_net_output_bytes")[0]
		fn()
		bytes := evaltest.Info(t, c, "stats", "total_net_output_bytes")[0] - before
		t.Logf("%s: Redis sent %.0f bytes", what, bytes)
		return bytes
	}
	summarize := func() {
		if _, err := b.live.Summarize(ctx, "big", ""); err != nil {
			t.Fatal(err)
		}
	}
	first := sent("first summary", summarize)
	finish(n, n+10)
	again := sent("summary after 10 more ended", summarize)
	trips := evaltest.CountRoundTrips(b.client)
	idle := sent("summary after none ended", summarize)
	if first < 1e6 || again > 20_000 || idle > 10_000 {
		t.Fatalf("Redis sent %.0f bytes for the first summary, %.0f after 10 more ended, %.0f after none: want MBs, then a few KB", first, again, idle)
	}
	if n := trips.N(); n != 1 {
		t.Errorf("a summary when none ended took %d round trips, want 1", n)
	}
	sum := b.same(t, "after", "big", "")
	if sum.Passed != n+10 || len(sum.Groups) != run.MaxSummaryGroups || sum.MoreGroups != 100 {
		t.Fatalf("summary: %d passed, %d groups listed, %d more", sum.Passed, len(sum.Groups), sum.MoreGroups)
	}
}

// TestSummaryLiveStartsOver: a tally that cannot go on from where it stands
// is made anew, so that the summary is still the run's: the run replaced
// by another of its name, its log of ends cut short, its counts lost, its
// log and counts lost then grown back past the tally, Redis rewound and
// the evals it lost ended again (other records, as many of each status),
// an end recorded by the release before the log, the run gone.
func TestSummaryLiveStartsOver(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault func(t *testing.T, b *liveBundle, k keys.Run)
	}{
		{"run replaced", func(t *testing.T, b *liveBundle, k keys.Run) {
			c := b.server.Client(t)
			if err := c.Del(t.Context(), k.Meta(), k.Done(), k.Counts(), k.Ended(), k.Evals()).Err(); err != nil {
				t.Fatal(err)
			}
			if err := b.whole.Create(t.Context(), run.Run{Name: "r", Pool: "default", CreatedAt: time.Now().Add(time.Second), Keys: []string{"a", "b", "c"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.whole.Finish(t.Context(), "r", run.Record{Key: "c", Status: run.Errored}); err != nil {
				t.Fatal(err)
			}
		}},
		{"log cut short", func(t *testing.T, b *liveBundle, k keys.Run) {
			c := b.server.Client(t)
			if err := c.Del(t.Context(), k.Ended()).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := b.whole.Finish(t.Context(), "r", run.Record{Key: "c", Status: run.Failed}); err != nil {
				t.Fatal(err)
			}
		}},
		{"log and counts lost, then grown back", func(t *testing.T, b *liveBundle, k keys.Run) {
			if err := b.server.Client(t).Del(t.Context(), k.Ended(), k.Counts(), k.Done()).Err(); err != nil {
				t.Fatal(err)
			}
			for _, rec := range []run.Record{{Key: "c", Status: run.Passed}, {Key: "a", Status: run.Failed}, {Key: "b", Status: run.Passed}} {
				if _, err := b.whole.Finish(t.Context(), "r", rec); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"Redis rewound, the lost ends ended again", func(t *testing.T, b *liveBundle, k keys.Run) {
			c := b.server.Client(t)
			dumps := map[string]string{}
			for _, key := range k.Script() {
				if d, err := c.Dump(t.Context(), key).Result(); err == nil {
					dumps[key] = d
				}
			}
			if _, err := b.whole.Finish(t.Context(), "r", run.Record{Key: "c", Status: run.Failed, Score: score(0.9), Error: "before the rewind"}); err != nil {
				t.Fatal(err)
			}
			b.same(t, "before the rewind", "r", "")
			if err := c.Del(t.Context(), k.Script()...).Err(); err != nil {
				t.Fatal(err)
			}
			for key, d := range dumps {
				if err := c.Restore(t.Context(), key, 0, d).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := b.whole.Finish(t.Context(), "r", run.Record{Key: "c", Status: run.Failed, Score: score(0.1), Error: "after the rewind"}); err != nil {
				t.Fatal(err)
			}
		}},
		{"an end recorded by the release before the log", func(t *testing.T, b *liveBundle, k keys.Run) {
			// Its own JSON, counted, not logged: as that release's Finish.
			old, _ := json.Marshal(run.Record{Key: "c", Status: run.Failed, Score: score(0.5), Error: "old release"})
			if _, err := b.client.TxPipelined(t.Context(), func(pipe redis.Pipeliner) error {
				pipe.HSet(t.Context(), k.Done(), "c", old)
				pipe.HIncrBy(t.Context(), k.Counts(), run.Failed, 1)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}},
		{"counts lost", func(t *testing.T, b *liveBundle, k keys.Run) {
			if err := b.server.Client(t).Del(t.Context(), k.Counts()).Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"reopened and ended again", func(t *testing.T, b *liveBundle, k keys.Run) {
			r, err := b.whole.Get(t.Context(), "r")
			if err != nil {
				t.Fatal(err)
			}
			if got, err := b.whole.Reopen(t.Context(), r, r.Keys, run.Failed); err != nil || len(got) != 1 {
				t.Fatalf("reopen: %q, %v", got, err)
			}
			if _, err := b.whole.Finish(t.Context(), "r", run.Record{Key: "b", Status: run.Failed, Score: score(0.5)}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupLive(t)
			if err := b.whole.Create(t.Context(), run.Run{Name: "r", Pool: "default", CreatedAt: time.Now(), Keys: []string{"a", "b", "c"}}); err != nil {
				t.Fatal(err)
			}
			for _, rec := range []run.Record{{Key: "a", Status: run.Passed, Score: score(1)}, {Key: "b", Status: run.Failed, Score: score(0)}} {
				if _, err := b.whole.Finish(t.Context(), "r", rec); err != nil {
					t.Fatal(err)
				}
			}
			b.same(t, "before", "r", "")
			tt.fault(t, b, keys.ForRun("r"))
			b.same(t, "after", "r", "")
		})
	}
	t.Run("run replaced before any end, as old, with epochs", func(t *testing.T) {
		t.Parallel()
		b := setupLive(t)
		created := time.Now()
		if err := b.whole.Create(t.Context(), run.Run{Name: "r", Pool: "default", CreatedAt: created, Keys: []string{"a", "b"}}); err != nil {
			t.Fatal(err)
		}
		b.same(t, "before", "r", "")
		if err := b.server.Client(t).FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.whole.Create(t.Context(), run.Run{Name: "r", Pool: "default", CreatedAt: created, Keys: []string{"a#1", "a#2"}, Epochs: 2}); err != nil {
			t.Fatal(err)
		}
		for _, rec := range []run.Record{{Key: "a#1", Epoch: 1, Status: run.Passed, Score: score(1)}, {Key: "a#2", Epoch: 2, Status: run.Failed, Score: score(0)}} {
			if _, err := b.whole.Finish(t.Context(), "r", rec); err != nil {
				t.Fatal(err)
			}
		}
		b.same(t, "after", "r", "")
	})
	t.Run("run gone", func(t *testing.T) {
		t.Parallel()
		b := setupLive(t)
		if err := b.whole.Create(t.Context(), run.Run{Name: "r", Pool: "default", CreatedAt: time.Now(), Keys: []string{"a"}}); err != nil {
			t.Fatal(err)
		}
		b.same(t, "before", "r", "")
		if err := b.server.Client(t).FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := b.live.Summarize(t.Context(), "r", ""); !errors.Is(err, run.ErrNotFound) {
			t.Fatalf("summary of a run gone: %v, want ErrNotFound", err)
		}
	})
}

// TestSummaryLiveCompareBothWays: comparisons of two runs each way round,
// at once, do not wait on each other.
func TestSummaryLiveCompareBothWays(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	for _, name := range []string{"x", "y"} {
		if err := b.live.Create(t.Context(), run.Run{Name: name, Pool: "default", CreatedAt: time.Now(), Keys: []string{"a"}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			name, against := "x", "y"
			if i%2 == 1 {
				name, against = against, name
			}
			if _, err := b.live.Summarize(t.Context(), name, against); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// TestLiveRunsBounded: the tallies take at most Options.LiveBytes, as
// estimated, the runs summed up longest ago forgotten first, the last one
// kept whatever its size.
func TestLiveRunsBounded(t *testing.T) {
	t.Parallel()
	c := evaltest.StartT(t, evaltest.Options{}).Client(t)
	ctx := t.Context()
	for _, tt := range []struct {
		name string
		ends int
	}{{"a", 40}, {"b", 40}, {"c", 40}, {"big", 400}} {
		keys := make([]string, tt.ends)
		for i := range keys {
			keys[i] = fmt.Sprint(i)
		}
		if err := run.NewStore(c, run.Options{}).Create(ctx, run.Run{Name: tt.name, Pool: "default", CreatedAt: time.Now(), Keys: keys}); err != nil {
			t.Fatal(err)
		}
		if _, err := run.NewStore(c, run.Options{}).FinishMany(ctx, tt.name, keys, run.Record{Status: run.Passed}); err != nil {
			t.Fatal(err)
		}
	}
	// What a small run and the big one take, each alone.
	weigh := func(name string) int {
		s := run.NewStore(c, run.Options{})
		if _, err := s.Summarize(ctx, name, ""); err != nil {
			t.Fatal(err)
		}
		_, bytes := s.Tallies()
		return bytes
	}
	small, big := weigh("a"), weigh("big")
	if big < 3*small {
		t.Fatalf("a run of 400 ends takes %d bytes, one of 40 %d", big, small)
	}
	s := run.NewStore(c, run.Options{LiveBytes: 2*small + small/2})
	for _, step := range []struct {
		summarize string
		kept      []string
		bytes     int
	}{
		{"a", []string{"a"}, small},
		{"b", []string{"a", "b"}, 2 * small},
		{"a", []string{"a", "b"}, 2 * small},
		{"c", []string{"a", "c"}, 2 * small}, // b was used longest ago
		{"big", []string{"big"}, big},
		{"a", []string{"a"}, small},
	} {
		if _, err := s.Summarize(ctx, step.summarize, ""); err != nil {
			t.Fatal(err)
		}
		kept, bytes := s.Tallies()
		if !slices.Equal(kept, step.kept) || bytes != step.bytes {
			t.Fatalf("after summing up %s: tallies of %q, %d bytes; want %q, %d", step.summarize, kept, bytes, step.kept, step.bytes)
		}
	}
}
