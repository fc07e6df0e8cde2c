package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/run"
)

// endRun creates the run name of the keys given and records their ends.
func endRun(t *testing.T, b *bundle, name string, size int, ends ...run.Record) {
	t.Helper()
	ks := make([]string, size)
	for i := range ks {
		ks[i] = fmt.Sprint("k", i)
	}
	if err := b.handler.runs.Create(t.Context(), run.Run{Name: name, Pool: b.pool.Name(), CreatedAt: time.Now(), Keys: ks}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range ends {
		if _, err := b.handler.runs.Finish(t.Context(), name, rec); err != nil {
			t.Fatal(err)
		}
	}
}

// evalsPages reads every page of path from its first, and the keys listed,
// failing the test on a page whose counts are not want's.
func evalsPages(t *testing.T, b *bundle, path string, want run.Counts) (keys []string, pages int) {
	t.Helper()
	cursor := ""
	for {
		p := path
		if cursor != "" {
			p += "&cursor=" + cursor
		}
		a := decodeAs[EvalsAnswer](t, do(t, "GET", b.url+p, ""), 200)
		if a.Counts != want {
			t.Fatalf("%s: counts %+v, want %+v", p, a.Counts, want)
		}
		for _, e := range a.Evals {
			if e.EvalID != run.EvalID("r1", e.Key) {
				t.Fatalf("%s: eval %+v", p, e)
			}
			keys = append(keys, e.Key)
		}
		pages++
		if cursor = a.NextCursor; cursor == "" {
			return keys, pages
		}
	}
}

// GET /runs/{name}/evals pages the run's ended evals in the order they
// ended, each once across pages, filtered by each parameter; bad
// parameters are a 400 that says which in one line; an unknown run, 404.
func TestRunEvals(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	ends := []run.Record{
		{Key: "k3", Status: run.Passed, Group: "math", Executor: "http://e1", Score: new(1.0), At: time.UnixMilli(1_700_000_000_000)},
		{Key: "k0", Status: run.Failed, Group: "math", Executor: "http://e2", Error: "Wrong Answer: 41"},
		{Key: "k5", Status: run.Cancelled},
		{Key: "k1", Status: run.Errored, Group: "code", Executor: "http://e2", Error: "exit status 3"},
		{Key: "k4", Status: run.Passed, Group: "code", Executor: "http://e1"},
		{Key: "k6", Status: run.Failed, Group: "math", Executor: "http://e1", Output: json.RawMessage(`{"answer":"forty"}`)},
		{Key: "k7", Status: run.Passed, Executor: "http://e1"},
	}
	endRun(t, b, "r1", 9, ends...)
	counts := run.Counts{Size: 9, Passed: 3, Failed: 2, Errored: 1, Cancelled: 1, Pending: 2}
	for _, tc := range []struct {
		name, query string
		want        []string
	}{
		{"all", "", []string{"k3", "k0", "k5", "k1", "k4", "k6", "k7"}},
		{"passed", "status=passed", []string{"k3", "k4", "k7"}},
		{"failed", "status=failed", []string{"k0", "k6"}},
		{"errored", "status=errored", []string{"k1"}},
		{"cancelled", "status=cancelled", []string{"k5"}},
		{"group", "group=math", []string{"k3", "k0", "k6"}},
		{"executor", "executor=" + url.QueryEscape("http://e2"), []string{"k0", "k1"}},
		{"q in the reason", "q=wrong+ANSWER", []string{"k0"}},
		{"q in the output's reason", "q=forty", []string{"k6"}},
		{"q in the eval ID", "q=R1%2FK4", []string{"k4"}},
		{"q nowhere", "q=nothing", nil},
		{"every filter", "status=passed&group=code&executor=" + url.QueryEscape("http://e1") + "&q=k", []string{"k4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, limit := range []int{1, 2, 50} {
				got, pages := evalsPages(t, b, fmt.Sprintf("/runs/r1/evals?limit=%d&%s", limit, tc.query), counts)
				if !slices.Equal(got, tc.want) {
					t.Fatalf("limit %d: listed %q, want %q", limit, got, tc.want)
				}
				if len(tc.want) > 0 && pages > (len(tc.want)+limit-1)/limit+1 {
					t.Fatalf("limit %d: %d pages for %d evals", limit, pages, len(tc.want))
				}
			}
		})
	}
	// A row is the record's, less its output.
	a := decodeAs[EvalsAnswer](t, do(t, "GET", b.url+"/runs/r1/evals?limit=2", ""), 200)
	want := []EvalRow{
		{EvalID: "r1/k3", Key: "k3", Status: run.Passed, Group: "math", Executor: "http://e1", Score: new(1.0), EndedAt: time.UnixMilli(1_700_000_000_000)},
		{EvalID: "r1/k0", Key: "k0", Status: run.Failed, Group: "math", Executor: "http://e2", Reason: "Wrong Answer: 41"},
	}
	if len(a.Evals) != 2 || a.NextCursor == "" || a.Evals[0].EvalID != want[0].EvalID || *a.Evals[0].Score != 1 || !a.Evals[0].EndedAt.Equal(want[0].EndedAt) || a.Evals[1] != want[1] {
		t.Fatalf("first page %+v, want %+v and a next cursor", a, want)
	}

	for _, tc := range []struct{ query, says string }{
		{"status=pending", "status"},
		{"status=PASSED", "status"},
		{"limit=0", "limit"},
		{"limit=501", "limit"},
		{"limit=ten", "limit"},
		{"cursor=-1", "cursor"},
		{"cursor=abc", "cursor"},
		{"sort=key", "sort"},
	} {
		t.Run("bad "+tc.query, func(t *testing.T) {
			a := do(t, "GET", b.url+"/runs/r1/evals?"+tc.query, "")
			if msg := a.errMsg(); a.code != 400 || !strings.Contains(msg, tc.says) || strings.Contains(msg, "\n") {
				t.Fatalf("%s, want a 400 on one line about %s", a, tc.says)
			}
		})
	}
	for _, path := range []string{"/runs/nope/evals", "/runs/nope/evals?status=failed", "/runs/" + url.PathEscape("bad name!") + "/evals"} {
		if a := do(t, "GET", b.url+path, ""); a.code != 404 || a.errMsg() == "" {
			t.Errorf("GET %s: %s, want 404", path, a)
		}
	}
	// Past the log's end: no eval, no next cursor.
	if a := decodeAs[EvalsAnswer](t, do(t, "GET", b.url+"/runs/r1/evals?cursor=100", ""), 200); len(a.Evals) != 0 || a.NextCursor != "" || a.Counts != counts {
		t.Errorf("past the end: %+v", a)
	}
}

// readCounter counts what the run's evals endpoint reads of a run's log
// of ends and of its records, per request (requests one at a time).
type readCounter struct {
	ended, done string
	// entries is the most log entries one LRANGE asked for (in lua.Read's
	// script, sent again as an EVAL after a NOSCRIPT).
	entries atomic.Int64
	records atomic.Int64 // records asked for (HMGET)
}

func (h *readCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *readCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}

func (h *readCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			h.count(cmd)
		}
		return next(ctx, cmds)
	}
}

func (h *readCounter) count(cmd redis.Cmder) {
	args := cmd.Args()
	switch cmd.Name() {
	case "hmget":
		if args[1] == h.done {
			h.records.Add(int64(len(args) - 2))
		}
	case "evalsha", "eval":
		for i := range len(args) - 3 {
			if args[i] == "lrange" && args[i+1] == h.ended {
				start, _ := strconv.ParseInt(fmt.Sprint(args[i+2]), 10, 64)
				stop, _ := strconv.ParseInt(fmt.Sprint(args[i+3]), 10, 64)
				if span := stop - start + 1; span > h.entries.Load() {
					h.entries.Store(span)
				}
			}
		}
	}
}

// A filter that matches only the last of 20,000 ended evals: no request
// reads more than run.EvalsScan log entries and records; each answers
// the cursor where it stopped, nothing matched yet, and following them
// reaches the one that matches.
func TestRunEvalsBounded(t *testing.T) {
	t.Parallel()
	const n = 20_000
	b := setup(t, Options{})
	endRun(t, b, "big", n)
	ks := make([]string, n-1)
	for i := range ks {
		ks[i] = fmt.Sprint("k", i)
	}
	if _, err := b.handler.runs.FinishMany(t.Context(), "big", ks, run.Record{Status: run.Passed, Executor: "http://e1"}); err != nil {
		t.Fatal(err)
	}
	last := fmt.Sprint("k", n-1)
	if _, err := b.handler.runs.Finish(t.Context(), "big", run.Record{Key: last, Status: run.Failed, Executor: "http://e1"}); err != nil {
		t.Fatal(err)
	}
	h := &readCounter{ended: keys.ForRun("big").Ended(), done: keys.ForRun("big").Done()}
	b.client.AddHook(h)

	var (
		cursor  int64
		found   []string
		slowest time.Duration
	)
	requests := 0
	for requests = 1; requests <= n/run.EvalsScan+1; requests++ {
		h.entries.Store(0)
		h.records.Store(0)
		start := time.Now()
		a := decodeAs[EvalsAnswer](t, do(t, "GET", fmt.Sprintf("%s/runs/big/evals?status=failed&cursor=%d", b.url, cursor), ""), 200)
		slowest = max(slowest, time.Since(start))
		if e, r := h.entries.Load(), h.records.Load(); e > run.EvalsScan || r > run.EvalsScan || e == 0 {
			t.Fatalf("request %d read %d log entries and %d records, want 1 to %d", requests, e, r, run.EvalsScan)
		}
		if a.Counts.Passed != n-1 || a.Counts.Failed != 1 {
			t.Fatalf("request %d: counts %+v", requests, a.Counts)
		}
		for _, e := range a.Evals {
			found = append(found, e.Key)
		}
		if a.NextCursor == "" {
			break
		}
		if requests == 1 && len(a.Evals) != 0 {
			t.Fatalf("the first request found %+v", a.Evals)
		}
		next, err := strconv.ParseInt(a.NextCursor, 10, 64)
		if err != nil || next <= cursor || next-cursor > run.EvalsScan {
			t.Fatalf("request %d: from %d, next cursor %q: want it ahead by 1 to %d", requests, cursor, a.NextCursor, run.EvalsScan)
		}
		cursor = next
	}
	t.Logf("%d requests, the slowest %s", requests, slowest)
	if !slices.Equal(found, []string{last}) || requests != n/run.EvalsScan {
		t.Fatalf("after %d requests: found %q, want %s after %d", requests, found, last, n/run.EvalsScan)
	}
}

// openapi.json gives the evals endpoint's bounds as the run package has
// them.
func TestOpenAPIRunEvalsBounds(t *testing.T) {
	t.Parallel()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	var op struct {
		Description string `json:"description"`
		Parameters  []struct {
			Name   string `json:"name"`
			Schema struct {
				Maximum int `json:"maximum"`
				Default int `json:"default"`
			} `json:"schema"`
		} `json:"parameters"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(doc.Paths[Prefix+"/runs/{name}/evals"]["get"], &op); err != nil {
		t.Fatal(err)
	}
	if scan := fmt.Sprintf("at most %d,%03d entries", run.EvalsScan/1000, run.EvalsScan%1000); !strings.Contains(op.Description, scan) {
		t.Errorf("description %q does not say %q", op.Description, scan)
	}
	for _, p := range op.Parameters {
		if p.Name == "limit" && (p.Schema.Maximum != run.MaxEvalsLimit || p.Schema.Default != run.DefaultEvalsLimit) {
			t.Errorf("limit: maximum %d, default %d; want %d, %d", p.Schema.Maximum, p.Schema.Default, run.MaxEvalsLimit, run.DefaultEvalsLimit)
		}
	}
}
