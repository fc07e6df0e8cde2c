package run_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
)

// TestSummaryFailuresBounded: a run of 1,000 failures sums up with the
// first MaxSummaryFailures of them, in the order they ended, and a count of
// the rest; Results still has every one.
func TestSummaryFailuresBounded(t *testing.T) {
	t.Parallel()
	const n = 1000
	var ks []string
	for i := range n {
		ks = append(ks, fmt.Sprint("k", i))
	}
	s, name := setup(t, ks...)
	for _, k := range ks {
		if _, err := s.Finish(t.Context(), name, run.Record{Key: k, Status: run.Failed, Error: "wrong answer"}); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := s.Summarize(t.Context(), name, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Failures) != run.MaxSummaryFailures || sum.MoreFailures != n-run.MaxSummaryFailures || sum.Failed != n || sum.Failures[0].Key != "k0" {
		t.Fatalf("summary: %d failures listed (first %q), %d more, %d failed; want %d, %d more", len(sum.Failures), sum.Failures[0].Key, sum.MoreFailures, sum.Failed, run.MaxSummaryFailures, n-run.MaxSummaryFailures)
	}
	if b, _ := json.Marshal(sum); len(b) > 20_000 {
		t.Errorf("summary is %d bytes", len(b))
	}
	if _, rows, err := s.Results(t.Context(), name); err != nil || len(rows) != n {
		t.Fatalf("results: %d rows, %v", len(rows), err)
	}
}

// TestSummaryFailuresListedSmall: a failure a summary lists says why in a
// line, without the grader's output, stdout and stderr (100 KB each here),
// its error clipped, so that 100 of them weigh little in the summary and
// in the tally behind it; Results has the record whole.
func TestSummaryFailuresListedSmall(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "k")
	big := strings.Repeat("x", 100_000)
	rec := run.Record{Key: "k", Status: run.Failed, Error: "wrong answer " + big, Output: json.RawMessage(`"` + big + `"`), Stdout: big, Stderr: big + "\nAssertionError"}
	if _, err := s.Finish(t.Context(), name, rec); err != nil {
		t.Fatal(err)
	}
	sum, err := s.Summarize(t.Context(), name, "")
	if err != nil {
		t.Fatal(err)
	}
	f := sum.Failures[0]
	if f.Output != nil || f.Stdout != "" || f.Stderr != "" || utf8.RuneCountInString(f.Error) != run.MaxFailureError || !strings.HasPrefix(f.Reason, "wrong answer xxx") {
		t.Errorf("failure listed with %d bytes of output, %d of stdout, %d of stderr, an error of %d characters, reason %.40q", len(f.Output), len(f.Stdout), len(f.Stderr), utf8.RuneCountInString(f.Error), f.Reason)
	}
	if _, rows, err := s.Results(t.Context(), name); err != nil || rows[0].Stderr != rec.Stderr || rows[0].Error != rec.Error {
		t.Errorf("results lost the record whole: %v", err)
	}
}

// TestRecordForms: a record reads back as written, from the compact form
// the run keeps and from the form a release before it wrote.
func TestRecordForms(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "new", "old")
	ctx := t.Context()
	at := time.UnixMilli(1_700_000_000_123)
	want := run.Record{Key: "new", Status: run.Failed, Score: score(0.25), Duration: 1.5, Retries: 2, Error: "e", Executor: "http://e:1", Output: json.RawMessage(`{"a":1}`), At: at}
	if _, err := s.Finish(ctx, name, want); err != nil {
		t.Fatal(err)
	}
	old, _ := json.Marshal(run.Record{Key: "old", Status: run.Passed, Executor: "http://e:2", At: at})
	if err := evaltest.Client(t).HSet(ctx, keys.ForRun(name).Done(), "old", old).Err(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key  string
		want run.Record
	}{
		{"new", want},
		{"old", run.Record{Key: "old", Status: run.Passed, Executor: "http://e:2", At: at}},
	}
	for _, tt := range tests {
		got, ok, err := s.Record(ctx, name, tt.key)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(tt.want)
		if err != nil || !ok || string(gb) != string(wb) {
			t.Errorf("record %s: %s, %v, %v; want %s", tt.key, gb, ok, err, wb)
		}
	}
	raw, _ := evaltest.Client(t).HGet(ctx, keys.ForRun(name).Done(), "new").Result()
	if len(raw) >= len(mustJSON(t, want)) {
		t.Errorf("kept record %s is no smaller than %s", raw, mustJSON(t, want))
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRunRetention: a run's own retention is what its keys live after an
// end, instead of the store's.
func TestRunRetention(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	s := run.NewStore(client, run.Options{})
	ctx := t.Context()
	tests := []struct {
		name      string
		retention time.Duration
		want      time.Duration
	}{
		{"own", time.Hour, time.Hour},
		{"default", 0, run.DefaultRetention},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := evaltest.Pool(t, client)
			if err := s.Create(ctx, run.Run{Name: name, Pool: "p", CreatedAt: time.Now(), Keys: []string{"a", "b"}, Retention: tt.retention}); err != nil {
				t.Fatal(err)
			}
			if n, err := s.FinishMany(ctx, name, []string{"a", "b", "a"}, run.Record{Status: run.Cancelled}); err != nil || n != 2 {
				t.Fatalf("finish many: %d, %v", n, err)
			}
			for _, k := range keys.ForRun(name).Script() {
				ttl := client.PTTL(ctx, k).Val()
				if ttl == -2*time.Nanosecond && (k == keys.ForRun(name).Running() || k == keys.ForRun(name).Specs() || k == keys.ForRun(name).Queued() || k == keys.ForRun(name).Admitted()) {
					continue // no eval runs, waits or is in flight: the key is gone
				}
				if ttl > tt.want || ttl < tt.want-time.Minute {
					t.Errorf("%s lives %s, want %s", k, ttl, tt.want)
				}
			}
			if r, err := s.Get(ctx, name); err != nil || r.Retention != tt.want {
				t.Errorf("run's retention %s, %v; want %s", r.Retention, err, tt.want)
			}
		})
	}
	if err := s.Create(ctx, run.Run{Name: "bad-retention", Pool: "p", Keys: []string{"a"}, Retention: time.Millisecond}); err == nil {
		t.Error("a retention of 1ms was taken")
	}
}
