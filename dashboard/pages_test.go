package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// getAs GETs path and decodes its JSON body, which must come with code.
func getAs[T any](t *testing.T, u string, code int) (T, string) {
	t.Helper()
	var v T
	c, body := get(t, u)
	if c != code {
		t.Fatalf("GET %s: %d %.300s, want %d", u, c, body, code)
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("GET %s: %v: %.300s", u, err, body)
	}
	return v, body
}

// walkPages reads every page of count executors and returns them, page by
// page.
func walkPages(t *testing.T, base string, count int) [][]pool.ExecutorStatus {
	t.Helper()
	var pages [][]pool.ExecutorStatus
	cursor, offset := "", 0
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("the pages never end")
		}
		v, _ := getAs[PageView](t, base+"/api/pool/page?count="+strconv.Itoa(count)+"&cursor="+url.QueryEscape(cursor), 200)
		if v.Cursor != cursor || v.Offset != offset {
			t.Fatalf("page %d: cursor %q, offset %d; asked for %q after %d executors", i, v.Cursor, v.Offset, cursor, offset)
		}
		offset += len(v.Executors)
		if !slices.IsSortedFunc(v.Executors, func(a, b pool.ExecutorStatus) int { return strings.Compare(a.URL, b.URL) }) {
			t.Fatalf("page %d is not sorted by URL", i)
		}
		pages = append(pages, v.Executors)
		if v.Next == "" {
			return pages
		}
		cursor = v.Next
	}
}

func registerN(t *testing.T, p *pool.Pool, n, batch int, format string) {
	t.Helper()
	for i := 0; i < n; i += batch {
		execs := make([]pool.Executor, 0, batch)
		for j := i; j < min(n, i+batch); j++ {
			execs = append(execs, pool.Executor{URL: fmt.Sprintf(format, j)})
		}
		if _, err := p.Register(t.Context(), execs...); err != nil {
			t.Fatal(err)
		}
	}
}

// /api/pool/page: pages of exactly count executors (the last one shorter),
// each executor once, the counts of the whole pool, a lease where there is
// one; over a hash Redis answers in batches of about the count asked for
// (600 executors, more than Redis keeps in a listpack) and over one it
// answers whole (3).
func TestPoolPageEndpoint(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	ctx := t.Context()
	registerN(t, b.pool, 597, 597, "http://x%03d:9001")
	l, err := b.pool.Acquire(ctx, "eval-page", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}

	v, body := getAs[PageView](t, b.url+"/api/pool/page", 200)
	if len(v.Executors) != DefaultPageCount || v.Next == "" || v.Cursor != "" || v.Pool != "web" || v.EvalsQueue != "evals:web" || v.MonitoringPath != MonitoringPath {
		t.Fatalf("first page: %d executors, cursor %q, next %q, pool %q, queue %q: %.300s", len(v.Executors), v.Cursor, v.Next, v.Pool, v.EvalsQueue, body)
	}
	if want := (pool.Counts{Registered: 600, Available: 599, Leased: 1}); v.Counts != want {
		t.Errorf("counts = %+v, want %+v", v.Counts, want)
	}
	if d := time.Since(v.Now); d < -time.Minute || d > time.Minute {
		t.Errorf("now = %s, not Redis's clock", v.Now)
	}

	for _, tc := range []struct {
		count int
		sizes []int
	}{{50, slices.Repeat([]int{50}, 12)}, {7, nil}, {120, []int{120, 120, 120, 120, 120}}, {500, []int{500, 100}}} {
		pages := walkPages(t, b.url, tc.count)
		seen := map[string]bool{}
		var sizes []int
		leased := 0
		for _, pg := range pages {
			sizes = append(sizes, len(pg))
			for _, e := range pg {
				if seen[e.URL] {
					t.Errorf("count %d: %s on two pages", tc.count, e.URL)
				}
				seen[e.URL] = true
				if e.Lease != nil {
					leased++
					if e.URL != l.URL || e.Lease.EvalID != "eval-page" || e.State != pool.StateLeased {
						t.Errorf("count %d: lease %+v on %s, want eval-page on %s", tc.count, e.Lease, e.URL, l.URL)
					}
				}
			}
		}
		if len(seen) != 600 || leased != 1 {
			t.Errorf("count %d: the pages show %d executors, %d leased; want 600, 1", tc.count, len(seen), leased)
		}
		for i, n := range sizes {
			if n != tc.count && (i != len(sizes)-1 || n > tc.count || n == 0) {
				t.Errorf("count %d: pages of %v executors, want each full but the last", tc.count, sizes)
				break
			}
		}
		if tc.sizes != nil && !slices.Equal(sizes, tc.sizes) {
			t.Errorf("count %d: pages of %v executors, want %v", tc.count, sizes, tc.sizes)
		}
	}

	// A small pool, which Redis's HSCAN answers whole: pages of 2.
	_, small := setup(t)
	pages := walkPages(t, small.url, 2)
	if len(pages) != 2 || len(pages[0]) != 2 || len(pages[1]) != 1 || pages[0][0].URL != "http://e1:9001" || pages[1][0].URL != "http://e3:9001" {
		t.Errorf("3 executors by 2: %v", pages)
	}

	for _, q := range []string{"count=0", "count=501", "count=x", "cursor=zzz", "cursor=0", "cursor=1.2.3", "cursor=1.-1.50.0", "cursor=1.0.0.0", "cursor=1.0.50.-1", "cursor=1.0.501.0"} {
		code, body := get(t, b.url+"/api/pool/page?"+q)
		var e struct{ Error string }
		if err := json.Unmarshal([]byte(body), &e); code != 400 || err != nil || e.Error == "" {
			t.Errorf("/api/pool/page?%s: %d %.200s, want 400 with an error", q, code, body)
		}
	}
}

// commandCalls is how many times Redis ran each command (INFO commandstats).
func commandCalls(t *testing.T, c *redis.Client) map[string]int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, m := range regexp.MustCompile(`cmdstat_([a-z|]+):calls=(\d+)`).FindAllStringSubmatch(info, -1) {
		calls[m[1]], _ = strconv.Atoi(m[2])
	}
	return calls
}

// With 100,000 executors the page, its timeline and the waiters answer
// without reading the whole pool: no HGETALL, HKEYS or SMEMBERS (what
// pool.Status reads with) reaches Redis, the answers are small, and a page is fast
// (pool.Status takes seconds at this size).
func TestPoolPageAt100k(t *testing.T) {
	t.Parallel()
	const n = 100_000
	_, b := setupTuned(t, Options{}, nil)
	registerN(t, b.pool, n, 1000, "http://x%06d:9001")
	if _, err := b.pool.Acquire(t.Context(), "eval-1", time.Minute, pool.AcquireArgs{}); err != nil {
		t.Fatal(err)
	}
	before := commandCalls(t, b.client)

	var (
		best  = time.Hour
		first PageView
	)
	for range 3 {
		start := time.Now()
		v, body := getAs[PageView](t, b.url+"/api/pool/page?count=50", 200)
		best = min(best, time.Since(start))
		if len(v.Executors) != 50 || v.Counts.Registered != n || v.Counts.Leased != 1 || v.Next == "" {
			t.Fatalf("page: %d executors, counts %+v, next %q", len(v.Executors), v.Counts, v.Next)
		}
		if len(body) > 64<<10 {
			t.Fatalf("a page of 50 is %d bytes", len(body))
		}
		first = v
	}
	if best > 200*time.Millisecond {
		t.Errorf("a page of 50 of %d executors takes %s at best, want < 200ms", n, best)
	}
	second, _ := getAs[PageView](t, b.url+"/api/pool/page?count=50&cursor="+url.QueryEscape(first.Next), 200)
	if len(second.Executors) != 50 || second.Executors[0].URL == first.Executors[0].URL {
		t.Fatalf("second page: %d executors", len(second.Executors))
	}

	q := url.Values{"url": nil}
	for _, e := range first.Executors {
		q.Add("url", e.URL)
	}
	start := time.Now()
	tl, body := getAs[TimelineView](t, b.url+"/api/pool/timeline?"+q.Encode(), 200)
	if took := time.Since(start); took > 200*time.Millisecond || len(body) > 64<<10 || !tl.CompleteFrom.Equal(tl.From) {
		t.Errorf("timeline of a page: %s, %d bytes, complete from %s (window from %s)", took, len(body), tl.CompleteFrom, tl.From)
	}
	if w, _ := getAs[WaitersView](t, b.url+"/api/pool/waiters", 200); w.Count != 0 || len(w.Waiters) != 0 {
		t.Errorf("waiters: %+v", w)
	}

	after := commandCalls(t, b.client)
	for _, cmd := range []string{"hgetall", "hkeys", "smembers"} {
		if after[cmd] != before[cmd] {
			t.Errorf("%s ran %d times serving the page: it reads the whole pool", cmd, after[cmd]-before[cmd])
		}
	}
	if after["hscan"]-before["hscan"] > 3*2+1+1 {
		t.Errorf("%d HSCANs for 5 pages", after["hscan"]-before["hscan"])
	}
}

// ended makes a lease of evalID on url that ends as released.
func ended(t *testing.T, p *pool.Pool, evalID string, require map[string]string) pool.Lease {
	t.Helper()
	l, err := p.Acquire(t.Context(), evalID, time.Minute, pool.AcquireArgs{Require: require})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := p.Release(t.Context(), l, pool.ReleaseArgs{Path: "test"}); err != nil {
		t.Fatal(err)
	}
	return l
}

// /api/pool/timeline: the leases of the executors asked for that ended in
// the window, newest first, and how; complete from the window's start
// unless the read was cut; one read shared for historyTTL.
func TestPoolTimelineEndpoint(t *testing.T) {
	t.Parallel()
	fresh := func(d *Dashboard) { d.historyTTL = 0 }
	_, b := setupTuned(t, Options{}, fresh)
	ctx := t.Context()
	for _, u := range []string{"http://a:9001", "http://b:9001"} {
		if _, err := b.pool.Register(ctx, pool.Executor{URL: u, Labels: map[string]string{"host": strings.TrimSuffix(strings.TrimPrefix(u, "http://"), ":9001")}}); err != nil {
			t.Fatal(err)
		}
	}
	a1 := ended(t, b.pool, "a-1", map[string]string{"host": "a"})
	ended(t, b.pool, "b-1", map[string]string{"host": "b"})
	a2 := ended(t, b.pool, "a-2", map[string]string{"host": "a"})
	if _, err := b.pool.Acquire(ctx, "a-running", time.Minute, pool.AcquireArgs{Require: map[string]string{"host": "a"}}); err != nil {
		t.Fatal(err)
	}

	v, body := getAs[TimelineView](t, b.url+"/api/pool/timeline?url=http://a:9001", 200)
	if len(v.Spans) != 2 || v.Spans[0].EvalID != "a-2" || v.Spans[1].EvalID != "a-1" {
		t.Fatalf("timeline of a: %s", body)
	}
	for i, l := range []pool.Lease{a2, a1} {
		s := v.Spans[i]
		if s.URL != "http://a:9001" || s.How != "released" || !s.From.Equal(l.AcquiredAt) || s.To.Before(s.From) || s.From.Before(v.From) || s.To.After(v.Now) {
			t.Errorf("span %+v of lease %+v in window %s–%s", s, l, v.From, v.Now)
		}
	}
	if got := v.Now.Sub(v.From); got != DefaultTimelineMinutes*time.Minute || !v.CompleteFrom.Equal(v.From) {
		t.Errorf("window %s from %s, complete from %s", got, v.From, v.CompleteFrom)
	}
	both, _ := getAs[TimelineView](t, b.url+"/api/pool/timeline?url=http://a:9001&url=http://b:9001&minutes=1", 200)
	if len(both.Spans) != 3 || both.Now.Sub(both.From) != time.Minute {
		t.Errorf("timeline of a and b over a minute: %+v", both)
	}
	if none, _ := getAs[TimelineView](t, b.url+"/api/pool/timeline?url=http://nobody:9001", 200); len(none.Spans) != 0 {
		t.Errorf("timeline of an executor with no leases: %+v", none)
	}

	many := url.Values{}
	for i := range MaxPageCount + 1 {
		many.Add("url", fmt.Sprintf("http://x%d:9001", i))
	}
	for _, q := range []string{"", "url=http://a:9001&minutes=0", "url=http://a:9001&minutes=61", "url=http://a:9001&minutes=x", many.Encode()} {
		if code, body := get(t, b.url+"/api/pool/timeline?"+q); code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("/api/pool/timeline?%.60s: %d %.200s, want 400", q, code, body)
		}
	}

	// A read cut at 2 of the pool's 3 ended leases is complete from the
	// end of the older one only.
	_, cut := setupTuned(t, Options{}, func(d *Dashboard) { fresh(d); d.historyLimit = 2 }, "http://a:9001")
	for i := range 3 {
		ended(t, cut.pool, fmt.Sprint("e-", i), nil)
	}
	c, body := getAs[TimelineView](t, cut.url+"/api/pool/timeline?url=http://a:9001", 200)
	if len(c.Spans) != 2 || !c.CompleteFrom.Equal(c.Spans[1].To) || !c.CompleteFrom.After(c.From) {
		t.Errorf("cut timeline: %s", body)
	}

	// One read serves every timeline within historyTTL.
	_, shared := setupTuned(t, Options{}, func(d *Dashboard) { d.historyTTL = time.Hour }, "http://a:9001", "http://b:9001")
	ended(t, shared.pool, "first", nil)
	if v, _ := getAs[TimelineView](t, shared.url+"/api/pool/timeline?url=http://a:9001&url=http://b:9001", 200); len(v.Spans) != 1 {
		t.Fatalf("first read: %+v", v)
	}
	ended(t, shared.pool, "second", nil)
	if v, _ := getAs[TimelineView](t, shared.url+"/api/pool/timeline?url=http://b:9001&url=http://a:9001", 200); len(v.Spans) != 1 {
		t.Errorf("a read within historyTTL was not shared: %+v", v)
	}
}

// /api/pool/waiters: the waiters in line, read only when the counts say
// some wait, and not for a pool over waitersMax.
func TestPoolWaitersEndpoint(t *testing.T) {
	t.Parallel()
	fill := func(b *testBundle) {
		t.Helper()
		for i := range 3 {
			if _, err := b.pool.Acquire(t.Context(), fmt.Sprint("busy-", i), time.Minute, pool.AcquireArgs{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.pool.Acquire(t.Context(), "waiting-1", time.Minute, pool.AcquireArgs{Wait: pool.Wait{Wake: b.pool.WakeKey("t"), PlaceTTL: time.Minute}}); !errors.Is(err, pool.ErrWaiting) {
			t.Fatalf("Acquire with a wait on a busy pool: %v", err)
		}
	}
	_, b := setup(t)
	before := commandCalls(t, b.client)
	if v, _ := getAs[WaitersView](t, b.url+"/api/pool/waiters", 200); v.Count != 0 || len(v.Waiters) != 0 || v.Skipped != "" {
		t.Errorf("no waiters: %+v", v)
	}
	if after := commandCalls(t, b.client); after["hgetall"] != before["hgetall"] {
		t.Errorf("with no waiters the pool was read whole")
	}
	fill(b)
	v, body := getAs[WaitersView](t, b.url+"/api/pool/waiters", 200)
	if v.Count != 1 || len(v.Waiters) != 1 || v.Waiters[0].EvalID != "waiting-1" || v.Waiters[0].Position != 1 || v.ReadAt.IsZero() {
		t.Errorf("one waiter: %s", body)
	}
	// A second waiter, within the read every tab shares: the count is the
	// list's, as read, not one more than the list shows.
	if _, err := b.pool.Acquire(t.Context(), "waiting-2", time.Minute, pool.AcquireArgs{Wait: pool.Wait{Wake: b.pool.WakeKey("t"), PlaceTTL: time.Minute}}); !errors.Is(err, pool.ErrWaiting) {
		t.Fatalf("Acquire with a wait on a busy pool: %v", err)
	}
	if v, body := getAs[WaitersView](t, b.url+"/api/pool/waiters", 200); v.Count != int64(len(v.Waiters)) {
		t.Errorf("after a second waiter: the count %d, the list %d: %s", v.Count, len(v.Waiters), body)
	}

	_, big := setupTuned(t, Options{}, func(d *Dashboard) { d.waitersMax = 2 }, "http://e1:9001", "http://e2:9001", "http://e3:9001")
	fill(big)
	before = commandCalls(t, big.client)
	v, body = getAs[WaitersView](t, big.url+"/api/pool/waiters", 200)
	if v.Count != 1 || len(v.Waiters) != 0 || !strings.Contains(v.Skipped, "more than 2 executors") {
		t.Errorf("a pool over waitersMax: %s", body)
	}
	if after := commandCalls(t, big.client); after["hgetall"] != before["hgetall"] {
		t.Errorf("a pool over waitersMax was read whole")
	}
}

// Asynqmon's task page works for an eval of a run, whose ID has a slash
// that Asynqmon's own router cannot route; other IDs are Asynqmon's.
func TestAsynqmonTaskWithSlash(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	aq := asynq.NewClientFromRedisClient(b.client)
	for _, id := range []string{"nightly/k1", "plain"} {
		e := tasks.Eval{ID: id, Pool: "web", Spec: json.RawMessage(`{"grade":"failed"}`)}
		if id == "nightly/k1" {
			e.Run, e.Key = "nightly", "k1" // a run's eval: only those hold '/'
		}
		task, err := tasks.NewEval(e, tasks.EvalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	type info struct {
		ID, Queue, Type, Payload, State string
		MaxRetry                        int `json:"max_retry"`
		Timeout                         int `json:"timeout_seconds"`
	}
	for _, path := range []string{"evals%3Aweb/tasks/nightly%2Fk1", "evals:web/tasks/nightly/k1", "evals:web/tasks/plain"} {
		v, body := getAs[info](t, b.url+"/monitoring/api/queues/"+path, 200)
		want := "nightly/k1"
		if strings.HasSuffix(path, "plain") {
			want = "plain"
		}
		if v.ID != want || v.Queue != "evals:web" || v.Type != tasks.TypeEval || v.State != "pending" || !strings.Contains(v.Payload, `"grade":"failed"`) || v.MaxRetry == 0 || v.Timeout == 0 {
			t.Errorf("%s: %s", path, body)
		}
	}
	for _, path := range []string{"evals:web/tasks/nightly%2Fnope", "nope/tasks/nightly%2Fk1"} {
		if code, body := get(t, b.url+"/monitoring/api/queues/"+path); code != 404 {
			t.Errorf("%s: %d %.200s, want 404", path, code, body)
		}
	}
}

// The pages are served at /, /runs and /runs/NAME, each with a policy that
// runs its own scripts only.
func TestPages(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	for path, want := range map[string]string{"/": "api/pool/page", "/runs": "api/v1/runs", "/runs/nightly-1": "api/v1/runs"} {
		resp, body := req(t, "GET", b.url+path, "")
		csp := resp.Header.Get("Content-Security-Policy")
		if resp.StatusCode != 200 || !strings.Contains(body, want) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("%s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", path, csp)
		}
	}
	if code, _ := get(t, b.url+"/runs/a/b"); code != 404 {
		t.Errorf("/runs/a/b: %d, want 404", code)
	}
}
