package run_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/evalpool/evalpool/run"
)

// TestEvals pages a run's ended evals: in the order they ended, an eval
// reopened and ended again once, at its last end; each filter; the counts
// with every page.
func TestEvals(t *testing.T) {
	t.Parallel()
	s, name := setup(t, "a", "b", "c", "d", "e")
	ctx := t.Context()
	for _, rec := range []run.Record{
		{Key: "c", Status: run.Passed, Group: "math", Executor: "http://e1"},
		{Key: "a", Status: run.Failed, Group: "math", Executor: "http://e2", Error: "Wrong Answer"},
		{Key: "e", Status: run.Cancelled, Executor: "http://e1"},
		{Key: "b", Status: run.Errored, Group: "code", Executor: "http://e2", Error: "exit 3"},
	} {
		if _, err := s.Finish(ctx, name, rec); err != nil {
			t.Fatal(err)
		}
	}
	r, err := s.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	// a is retried, and passes: its first entry in the log is skipped.
	if _, err := s.Reopen(ctx, r, []string{"a"}, run.Failed); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx, name, run.Record{Key: "a", Status: run.Passed, Group: "math", Executor: "http://e1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		q    run.EvalsQuery
		want []string
	}{
		{"all", run.EvalsQuery{}, []string{"c", "e", "b", "a"}},
		{"status", run.EvalsQuery{Status: run.Passed}, []string{"c", "a"}},
		{"group", run.EvalsQuery{Group: "math"}, []string{"c", "a"}},
		{"executor", run.EvalsQuery{Executor: "http://e2"}, []string{"b"}},
		{"text in the reason", run.EvalsQuery{Text: "EXIT"}, []string{"b"}},
		{"text in the eval ID", run.EvalsQuery{Text: name + "/E"}, []string{"e"}},
		{"text not the old reason", run.EvalsQuery{Text: "wrong"}, nil},
		{"all filters", run.EvalsQuery{Status: run.Passed, Group: "math", Executor: "http://e1", Text: "/c"}, []string{"c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A page of one at a time: each next cursor reads on.
			q := tc.q
			q.Limit = 1
			var got []string
			for range 10 {
				p, err := s.Evals(ctx, name, q)
				if err != nil {
					t.Fatal(err)
				}
				if p.Counts.Passed != 2 || p.Counts.Failed != 0 || p.Counts.Done() != 4 || p.Counts.Pending != 1 {
					t.Fatalf("counts %+v", p.Counts)
				}
				for _, rec := range p.Records {
					got = append(got, rec.Key)
				}
				if p.Next == 0 {
					break
				}
				q.Cursor = p.Next
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("listed %q, want %q", got, tc.want)
			}
		})
	}
	for _, q := range []run.EvalsQuery{{Status: run.Pending}, {Status: "PASSED"}, {Cursor: -1}, {Limit: -1}, {Limit: run.MaxEvalsLimit + 1}} {
		if _, err := s.Evals(ctx, name, q); !errors.Is(err, run.ErrInvalid) {
			t.Errorf("Evals(%+v): %v, want ErrInvalid", q, err)
		}
	}
	if _, err := s.Evals(ctx, "nope-"+name, run.EvalsQuery{}); !errors.Is(err, run.ErrNotFound) {
		t.Errorf("Evals of an unknown run: %v, want ErrNotFound", err)
	}
}
