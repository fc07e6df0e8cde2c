package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/run"
)

// TestHubReadsPastReopenedEnds: a hub's poller that meets a page of ends
// taken back (their evals reopened, then ended again later in the log)
// reads on past it, and hands its followers every latest end, with the
// log positions each batch covers.
func TestHubReadsPastReopenedEnds(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	f := b.handler.follows
	f.page = 2
	createRun(t, b, "hub", 3)
	finish(t, b, "hub", 1, "e1", "e2")
	s := b.handler.runs
	r, err := s.Get(t.Context(), "hub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reopen(t.Context(), r, []string{"e1", "e2"}, run.Passed); err != nil {
		t.Fatal(err)
	}
	finish(t, b, "hub", 1, "e3", "e1", "e2")
	h := &hub{name: "hub", subs: map[*subscription]struct{}{}}
	sub := &subscription{ch: make(chan batch, followBuffer)}
	h.subs[sub] = struct{}{}
	cursor, err := f.read(t.Context(), h, 0)
	if err != nil || cursor != 5 {
		t.Fatalf("read = %d, %v; want 5, the log's end", cursor, err)
	}
	close(sub.ch)
	var got []string
	at := int64(0)
	for b := range sub.ch {
		if b.from != at || b.to < b.from+int64(len(b.lines)) {
			t.Fatalf("batch [%d, %d) of %d lines after %d", b.from, b.to, len(b.lines), at)
		}
		at = b.to
		for _, line := range b.lines {
			var l ResultLine
			if err := json.Unmarshal(line, &l); err != nil {
				t.Fatal(err)
			}
			got = append(got, l.Key)
		}
	}
	if want := "e3,e1,e2"; strings.Join(got, ",") != want || at != 5 {
		t.Errorf("followers got %s up to %d, want %s up to 5", strings.Join(got, ","), at, want)
	}
}
