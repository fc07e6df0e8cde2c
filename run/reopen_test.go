package run_test

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
)

// TestReopen takes back only the ends of the statuses asked for, from the
// records, the counts (retries and scores too) and the run's end: the run
// is open again, back in its pool's index with its reconciliation cursor
// at the first eval reopened. A second call reopens nothing, and an eval
// not ended is left alone. A record of the release before (its own JSON)
// reopens too.
func TestReopen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		statuses []string
		want     []string
		counts   map[string]string
	}{
		{[]string{run.Errored}, []string{"c"},
			map[string]string{"passed": "1", "failed": "2", "errored": "0", "cancelled": "1", "retries": "2", "score_sum": "1.75", "score_n": "3", "reopened": "1"}},
		{[]string{run.Failed}, []string{"b", "e"},
			map[string]string{"passed": "1", "failed": "0", "errored": "1", "cancelled": "1", "retries": "3", "score_sum": "1", "score_n": "1", "reopened": "2"}},
		{[]string{run.Errored, run.Failed}, []string{"b", "c", "e"},
			map[string]string{"passed": "1", "failed": "0", "errored": "0", "cancelled": "1", "retries": "0", "score_sum": "1", "score_n": "1", "reopened": "3"}},
	}
	for _, tt := range tests {
		t.Run(tt.want[0]+strconv.Itoa(len(tt.want)), func(t *testing.T) {
			t.Parallel()
			s, name := setup(t, "a", "b", "c", "d", "e", "f")
			client := evaltest.Client(t)
			ctx := t.Context()
			k := keys.ForRun(name)
			for _, rec := range []run.Record{
				{Key: "a", Status: run.Passed, Score: score(1)},
				{Key: "b", Status: run.Failed, Score: score(0.25), Retries: 2},
				{Key: "c", Status: run.Errored, Retries: 3},
				{Key: "d", Status: run.Cancelled},
			} {
				if _, err := s.Finish(ctx, name, rec); err != nil {
					t.Fatal(err)
				}
			}
			// e ended under the release before: its record is its own JSON,
			// counted as that release's Finish counted it.
			old, _ := json.Marshal(run.Record{Key: "e", Status: run.Failed, Score: score(0.5)})
			if _, err := client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				pipe.HSet(ctx, k.Done(), "e", old)
				pipe.HIncrBy(ctx, k.Counts(), "failed", 1)
				pipe.HIncrByFloat(ctx, k.Counts(), "score_sum", 0.5)
				pipe.HIncrBy(ctx, k.Counts(), "score_n", 1)
				// The reconciliation had looked at every eval and closed
				// the run.
				pipe.HSet(ctx, k.Meta(), "reconciled", 6)
				pipe.ZRem(ctx, keys.OpenRuns("default"), name)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			r, err := s.Get(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Reopen(ctx, r, r.Keys, tt.statuses...)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Reopen(%v) = %q, %v; want %q", tt.statuses, got, err, tt.want)
			}
			counts := client.HGetAll(ctx, k.Counts()).Val()
			if !maps.Equal(counts, tt.counts) {
				t.Errorf("counts %v, want %v", counts, tt.counts)
			}
			ended, err := s.EndedKeys(ctx, name)
			for _, key := range got {
				if ended[key] || err != nil {
					t.Errorf("eval %s reopened but still ended (%v)", key, err)
				}
			}
			c, err := s.Progress(ctx, name)
			if err != nil || c.Done() != 5-len(tt.want) || c.Pending != 1+len(tt.want) {
				t.Errorf("progress %+v, %v", c, err)
			}
			if _, err := client.ZScore(ctx, keys.OpenRuns("default"), name).Result(); err != nil {
				t.Errorf("run not back in its pool's open runs: %v", err)
			}
			if at := client.HGet(ctx, k.Meta(), "reconciled").Val(); at != strconv.Itoa(slices.Index(r.Keys, tt.want[0])) {
				t.Errorf("reconciliation cursor %s, want the first eval reopened, %s", at, tt.want[0])
			}
			again, err := s.Reopen(ctx, r, r.Keys, tt.statuses...)
			if err != nil || len(again) != 0 || !maps.Equal(client.HGetAll(ctx, k.Counts()).Val(), tt.counts) {
				t.Errorf("second Reopen = %q, %v, counts %v; want nothing changed", again, err, client.HGetAll(ctx, k.Counts()).Val())
			}
			// An eval reopened ends again, and counts again.
			if ok, err := s.Finish(ctx, name, run.Record{Key: tt.want[0], Status: run.Passed}); !ok || err != nil {
				t.Fatalf("end after reopen: %v, %v", ok, err)
			}
			if c, _ := s.Progress(ctx, name); c.Done() != 6-len(tt.want) {
				t.Errorf("after one end again: progress %+v", c)
			}
		})
	}
}

// TestReopenRefuses: bad input changes nothing.
func TestReopenRefuses(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "a")
	ctx := t.Context()
	if _, err := s.Finish(ctx, name, run.Record{Key: "a", Status: run.Failed}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		keys     []string
		statuses []string
	}{
		{[]string{"a"}, nil},
		{[]string{"a"}, []string{run.Running}},
		{[]string{"a", "zz"}, []string{run.Failed}},
	} {
		if got, err := s.Reopen(ctx, r, tt.keys, tt.statuses...); !errors.Is(err, run.ErrInvalid) || len(got) != 0 {
			t.Errorf("Reopen(%q, %q) = %q, %v; want ErrInvalid", tt.keys, tt.statuses, got, err)
		}
	}
	if c, _ := s.Progress(ctx, name); c.Failed != 1 {
		t.Errorf("progress %+v after refusals", c)
	}
}

// TestEndedSinceReopened follows a run whose evals are reopened and end
// again: each end once, with its latest record, whether the follower read
// the old end or not; an entry of an eval reopened and not ended again is
// skipped, not taken for a run gone; a record of the release before (no
// position) is never skipped.
func TestEndedSinceReopened(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "a", "b", "c", "old")
	ctx := t.Context()
	client := evaltest.Client(t)
	k := keys.ForRun(name)
	old, _ := json.Marshal(run.Record{Key: "old", Status: run.Passed})
	if err := client.HSet(ctx, k.Done(), "old", old).Err(); err != nil {
		t.Fatal(err)
	}
	if err := client.RPush(ctx, k.Ended(), "old").Err(); err != nil {
		t.Fatal(err)
	}
	for _, rec := range []run.Record{{Key: "a", Status: run.Failed}, {Key: "b", Status: run.Errored}} {
		if _, err := s.Finish(ctx, name, rec); err != nil {
			t.Fatal(err)
		}
	}
	// follow reads on from cursor, page by page, to the log's end.
	follow := func(cursor int64, page int) ([]string, int64) {
		t.Helper()
		var got []string
		for {
			recs, next, err := s.EndedSince(ctx, name, cursor, page)
			if err != nil {
				t.Fatalf("from %d: %v", cursor, err)
			}
			if next < cursor+int64(len(recs)) || next > cursor+int64(page) {
				t.Fatalf("from %d, page %d: %d records, next %d", cursor, page, len(recs), next)
			}
			for _, rec := range recs {
				got = append(got, rec.Key+":"+rec.Status)
			}
			if next == cursor {
				return got, cursor
			}
			cursor = next
		}
	}
	early, cursor := follow(0, 10)
	if want := []string{"old:passed", "a:failed", "b:errored"}; !slices.Equal(early, want) {
		t.Fatalf("before the reopen: %q, want %q", early, want)
	}
	r, err := s.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reopen(ctx, r, []string{"a", "b"}, run.Failed, run.Errored); err != nil {
		t.Fatal(err)
	}
	if got, _ := follow(0, 1); !slices.Equal(got, []string{"old:passed"}) {
		t.Fatalf("reopened, not ended again: %q, want the old end alone", got)
	}
	for _, rec := range []run.Record{{Key: "b", Status: run.Passed}, {Key: "c", Status: run.Passed}, {Key: "a", Status: run.Passed}} {
		if _, err := s.Finish(ctx, name, rec); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"b:passed", "c:passed", "a:passed"}
	if got, _ := follow(cursor, 2); !slices.Equal(got, want) {
		t.Errorf("a follower that read the old ends: %q, want %q", got, want)
	}
	for _, page := range []int{1, 2, 10} {
		if got, _ := follow(0, page); !slices.Equal(got, append([]string{"old:passed"}, want...)) {
			t.Errorf("from 0, page %d: %q, want each end once, its latest", page, got)
		}
	}
	// The run gone is still told from an eval reopened.
	if err := client.Del(ctx, k.Meta(), k.Done()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EndedSince(ctx, name, 0, 10); !errors.Is(err, run.ErrNotFound) {
		t.Errorf("run gone: %v, want ErrNotFound", err)
	}
}
