//go:build bench

package benchmarks

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/api"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
)

// pagesEvals is the size of each run the pages read.
const pagesEvals = 100_000

// pages measures what the dashboard's pages cost to serve at pagesEvals
// evals per run: each API request a page makes, over HTTP, against two
// ended runs of that size (one compared with the other).
func pages(t *testing.T, srv *evaltest.Server, md *strings.Builder) {
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer rdb.Close()
	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	endedRun(t, c.Runs(), "pages-base", pagesEvals, pagesEvals)
	// The head run has evals left to end while it is read: ended before
	// each request of three rows.
	const ended = 100
	endedRun(t, c.Runs(), "pages-head", pagesEvals+3*ended*5*runs(), pagesEvals)
	moved := pagesEvals
	// serve makes a server of the API with a client of its own, so that it
	// has summed up no run yet; it keeps tallies of the runs unless told.
	serve := func(opts run.Options) *httptest.Server {
		c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{Runs: opts})
		if err != nil {
			t.Fatal(err)
		}
		h, err := api.New(api.Options{Client: c, Pool: "pages"})
		if err != nil {
			t.Fatal(err)
		}
		return httptest.NewServer(h)
	}
	ts, whole := serve(run.Options{}), serve(run.Options{LiveBytes: -1})
	defer ts.Close()
	defer whole.Close()
	requests := []struct {
		page, path string
		// first: each request is a new server's first (it reads the run
		// whole); whole: the server keeps no tally (each request reads the
		// run whole); ended: evals that end before each request.
		first, whole bool
		ended        int
	}{
		{"runs list", "/runs?limit=50", false, false, 0},
		{"run page, progress (polled)", "/runs/pages-head/progress", false, false, 0},
		{"run page, summary, a server's first read of the run", "/runs/pages-head", true, false, 0},
		{fmt.Sprintf("run page, summary, after %d more evals ended", ended), "/runs/pages-head", false, false, ended},
		{"run page, summary, none ended since", "/runs/pages-head", false, false, 0},
		{fmt.Sprintf("run page, summary, after %d more evals ended, by a server that keeps no tally", ended), "/runs/pages-head", false, true, ended},
		{"run page, a page of its evals", "/runs/pages-head/evals?limit=50", false, false, 0},
		{"run page, evals filtered, none matching", "/runs/pages-head/evals?limit=50&q=nothing-matches", false, false, 0},
		{"compare page, a server's first read of the two runs", "/runs/pages-head/compare?against=pages-base", true, false, 0},
		{fmt.Sprintf("compare page, after %d more evals ended", ended), "/runs/pages-head/compare?against=pages-base", false, false, ended},
	}
	md.WriteString("## Pages at 100,000 evals per run\n\n")
	fmt.Fprintf(md, "What each request of the dashboard's pages costs, served by the API over loopback HTTP, against two runs of %s ended evals each (every eval with a group, a score and an executor), one of them still running; the median of %d requests each. A server sums up a run once whole, then keeps up with it: rows marked \"after N more evals ended\" had N evals end before each request. The eval page reads one task and one record (O(1)); the pool page is measured at 100,000 executors in `dashboard.TestPoolPageAt100k`.\n\n", thousands(pagesEvals), 5*runs())
	md.WriteString("| page, request | time | bytes |\n| --- | ---: | ---: |\n")
	for _, rq := range requests {
		var took []float64
		var size int
		for range 5 * runs() {
			url := ts.URL
			switch {
			case rq.whole:
				url = whole.URL
			case rq.first:
				first := serve(run.Options{})
				url = first.URL
				defer first.Close()
			}
			finishRange(t, c.Runs(), "pages-head", moved, moved+rq.ended)
			moved += rq.ended
			start := time.Now()
			resp, err := http.Get(url + api.Prefix + rq.path)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %d %.200s", rq.path, resp.StatusCode, b)
			}
			took, size = append(took, time.Since(start).Seconds()), len(b)
		}
		fmt.Fprintf(md, "| %s: `GET %s` | %.1f ms | %s |\n", rq.page, rq.path, 1000*median(took), thousands(size))
	}
	md.WriteString("\n")
}

// endedRun writes run name of n evals, the first ended of them ended,
// straight to the run store.
func endedRun(t *testing.T, runs *run.Store, name string, n, ended int) {
	t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint(i)
	}
	if err := runs.Create(t.Context(), run.Run{Name: name, Pool: "pages", CreatedAt: time.Now(), Keys: keys}); err != nil {
		t.Fatal(err)
	}
	finishRange(t, runs, name, 0, ended)
}

// finishRange ends the evals from to to of a run endedRun wrote.
func finishRange(t *testing.T, runs *run.Store, name string, from, to int) {
	t.Helper()
	var next atomic.Int64
	next.Store(int64(from))
	if _, _, err := parallel(32, int64(to-from), 10*time.Minute, func() error {
		i := int(next.Add(1) - 1)
		score := float64(i%10) / 10
		status := run.Passed
		if i%7 == 0 {
			status = run.Failed
		}
		_, err := runs.Finish(t.Context(), name, run.Record{Key: fmt.Sprint(i), Status: status, Score: &score, Group: fmt.Sprint("g", i%20),
			Executor: fmt.Sprintf("http://10.0.%d.%d:9001", i%8, i%250), Duration: 1.5, At: time.Now()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
