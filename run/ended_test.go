package run_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/evalpool/evalpool/run"
)

// TestEndedSince follows a run's ends from a cursor: each end once, in the
// order they ended (not the run's), a second end of an eval not at all,
// cancels too, page by page.
func TestEndedSince(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "a", "b", "c", "d", "e")
	ctx := t.Context()
	recs, next, err := s.EndedSince(ctx, name, 0, 10)
	if err != nil || len(recs) != 0 || next != 0 {
		t.Fatalf("before any end: %v, %d, %v", recs, next, err)
	}
	ends := []run.Record{
		{Key: "c", Status: run.Passed, Score: score(1)},
		{Key: "a", Status: run.Failed, Error: "wrong"},
		{Key: "c", Status: run.Cancelled}, // ended already: not logged
		{Key: "e", Status: run.Cancelled},
		{Key: "b", Status: run.Errored},
	}
	for _, rec := range ends {
		if _, err := s.Finish(ctx, name, rec); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	var cursor int64
	for range 10 {
		recs, next, err := s.EndedSince(ctx, name, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		if next != cursor+int64(len(recs)) {
			t.Fatalf("from %d: %d records, next %d", cursor, len(recs), next)
		}
		if len(recs) == 0 {
			break
		}
		for _, rec := range recs {
			got = append(got, rec.Key+":"+rec.Status)
		}
		cursor = next
	}
	if want := []string{"c:passed", "a:failed", "e:cancelled", "b:errored"}; !slices.Equal(got, want) {
		t.Fatalf("followed %q, want %q", got, want)
	}
	if _, err := s.Finish(ctx, name, run.Record{Key: "d", Status: run.Passed}); err != nil {
		t.Fatal(err)
	}
	recs, next, err = s.EndedSince(ctx, name, cursor, 10)
	if err != nil || len(recs) != 1 || recs[0].Key != "d" || next != cursor+1 {
		t.Fatalf("after one more end: %v, %d, %v", recs, next, err)
	}

	tests := []struct {
		name   string
		run    string
		cursor int64
		max    int
		want   error
	}{
		{"negative cursor", name, -1, 10, run.ErrInvalid},
		{"zero max", name, 0, 0, run.ErrInvalid},
		{"max too large", name, 0, run.MaxEndedSince + 1, run.ErrInvalid},
		{"bad name", "a/b", 0, 10, run.ErrInvalid},
		{"unknown run", name + "-none", 0, 10, run.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, next, err := s.EndedSince(ctx, tt.run, tt.cursor, tt.max)
			if !errors.Is(err, tt.want) || recs != nil || next != tt.cursor {
				t.Fatalf("EndedSince(%q, %d, %d) = %v, %d, %v; want %v", tt.run, tt.cursor, tt.max, recs, next, err, tt.want)
			}
		})
	}
}
