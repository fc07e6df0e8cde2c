package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/run"
)

// createRun records a run of n evals (keys e1..en) in the bundle's store,
// as client.Submit would before enqueueing them.
func createRun(t *testing.T, b *bundle, name string, n int) []string {
	t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("e%d", i+1)
	}
	if err := b.handler.runs.Create(t.Context(), run.Run{Name: name, Pool: b.pool.Name(), CreatedAt: time.Now(), Keys: keys}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// finish ends the evals of keys as passed, each with an output of size
// bytes, as a worker records them.
func finish(t *testing.T, b *bundle, name string, size int, keys ...string) {
	t.Helper()
	out, _ := json.Marshal(strings.Repeat("x", size))
	for _, k := range keys {
		if _, err := b.handler.runs.Finish(t.Context(), name, run.Record{Key: k, Status: run.Passed, Output: out, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
}

// follower reads a followed run's stream in a goroutine of its own.
type follower struct {
	ended atomic.Int64 // lines that are an eval's end
	mu    sync.Mutex
	keys  []string
	err   error
	done  chan struct{}
}

// follow opens results?follow=1 and reads it until it ends or ctx is done.
func follow(t *testing.T, ctx context.Context, b *bundle, name string) *follower {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.url+"/runs/"+name+"/results?follow=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("follow %s: %s", name, resp.Status)
	}
	f := &follower{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l ResultLine
			err := json.Unmarshal(sc.Bytes(), &l)
			f.mu.Lock()
			if err != nil || l.EvalID == "" {
				f.err = fmt.Errorf("line %q: %v", sc.Text(), err)
			}
			f.keys = append(f.keys, l.Key)
			f.mu.Unlock()
			if l.Ended() {
				f.ended.Add(1)
			}
		}
	}()
	return f
}

// check waits for the stream's end and fails unless it carried want, in
// that order, each once.
func (f *follower) check(t *testing.T, want []string) {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(60 * time.Second):
		t.Fatal("a followed stream did not end when its run did")
	}
	if f.err != nil {
		t.Fatal(f.err)
	}
	if strings.Join(f.keys, ",") != strings.Join(want, ",") {
		t.Fatalf("a follower read %d ends %v…, want the %d in the order they ended", len(f.keys), f.keys[:min(5, len(f.keys))], len(want))
	}
}

// Following costs Redis what ended, not the run, whatever the followers:
// 20 followers of a run of 1,000 evals of 1 KB each, as its last evals
// end one by one.
func TestFollowCostsWhatEnded(t *testing.T) {
	t.Parallel()
	const size, last, followers = 1000, 5, 20
	b := setup(t, Options{}, nil)
	keys := createRun(t, b, "big", size)
	finish(t, b, "big", 1024, keys[:size-last]...)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	fs := make([]*follower, followers)
	for i := range fs {
		fs[i] = follow(t, ctx, b, "big")
	}
	caughtUp := func(n int64) func() bool {
		return func() bool {
			for _, f := range fs {
				if f.ended.Load() < n {
					return false
				}
			}
			return true
		}
	}
	evaltest.Eventually(t, 60*time.Second, "the followers never replayed the run", caughtUp(size-last))
	before := evaltest.Info(t, b.client, "stats", "total_net_output_bytes")[0]
	for i := size - last; i < size; i++ {
		finish(t, b, "big", 1024, keys[i])
		evaltest.Eventually(t, 30*time.Second, "the followers never read an end", caughtUp(int64(i+1)))
	}
	perEnd := (evaltest.Info(t, b.client, "stats", "total_net_output_bytes")[0] - before) / last
	for _, f := range fs {
		f.check(t, keys)
	}
	// A run's record is 1 KB: an end read once for all, with the polls
	// between, is a few of them; re-reading the run would be 1 MB per
	// follower.
	if perEnd > 64<<10 {
		t.Fatalf("Redis sent %.0f bytes per end to %d followers of a run of %d evals; want under 64 KiB: O(what ended), shared", perEnd, followers, size)
	}
	t.Logf("Redis sent %.0f bytes per end to %d followers", perEnd, followers)
}

// A follower that falls behind its hub (its client reads nothing for a
// while) is dropped from it and catches up from the run's log: it misses
// no end, and reads none twice.
func TestSlowFollowerCatchesUp(t *testing.T) {
	t.Parallel()
	logger, logs := evaltest.Logger()
	b := setup(t, Options{Logger: logger}, nil)
	b.handler.follows.page = 2 // a batch per two ends: the buffer fills soon
	keys := createRun(t, b, "slow", 100)
	// A small send buffer, so that a client that reads nothing holds the
	// server's writes up soon.
	ts := httptest.NewUnstartedServer(b.handler)
	small := &smallBuffers{Listener: ts.Listener}
	ts.Listener = small
	ts.Start()
	t.Cleanup(ts.Close)
	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET %s/runs/slow/results?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n", Prefix); err != nil {
		t.Fatal(err)
	}
	// The follower subscribes before any end: one that met ends in its
	// replay would block writing them, before its hub ever started.
	f := b.handler.follows
	evaltest.Eventually(t, 30*time.Second, "the follower never subscribed to its hub", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		h := f.hubs["slow"]
		return h != nil && h.started
	})
	// 100 ends of 64 KB each, unread: far more than the sockets hold.
	for i := range keys {
		finish(t, b, "slow", 64<<10, keys[i])
	}
	// The hub read every end while the follower's writes were held up.
	evaltest.Eventually(t, 30*time.Second, "the hub never read every end", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		h := f.hubs["slow"]
		return h == nil || h.ended
	})
	// Now read, with a send buffer of the usual size.
	small.grow()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("follow: %v, %v", resp, err)
	}
	defer resp.Body.Close()
	var got []string
	readLines(t, resp.Body, func(l ResultLine) { got = append(got, l.Key) })
	if strings.Join(got, ",") != strings.Join(keys, ",") {
		t.Fatalf("the slow follower read %d ends, want all %d once, in order", len(got), len(keys))
	}
	if logs.Count("fell behind") == 0 {
		t.Fatal("the follower never fell behind: the test did not test that")
	}
}

// smallBuffers gives the connections it accepts a small send buffer, until
// grow.
type smallBuffers struct {
	net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func (l *smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
		l.mu.Lock()
		l.conns = append(l.conns, tc)
		l.mu.Unlock()
	}
	return c, err
}

func (l *smallBuffers) grow() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.SetWriteBuffer(1 << 20)
	}
}

// Followers are capped per run (429) and in all (503), with one line each;
// a place given back is taken again, and a plain read of the results is
// not a follower.
func TestFollowCaps(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{MaxFollowersPerRun: 2, MaxFollowers: 3}, nil)
	createRun(t, b, "a", 1)
	createRun(t, b, "b", 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	first, firstCancel := context.WithCancel(ctx)
	follow(t, first, b, "a")
	follow(t, ctx, b, "a")
	follow(t, ctx, b, "b")
	for _, tc := range []struct {
		name, path string
		code       int
		want       string
	}{
		{"third of a run", "/runs/a/results?follow=1", http.StatusTooManyRequests, "too many followers of this run: run a has 2"},
		{"plain read", "/runs/a/results", http.StatusOK, ""},
		{"past the total", "/runs/b/results?follow=1", http.StatusServiceUnavailable, "too many followers: 3 runs' followers in all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, "GET", b.url+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Fatalf("%s: %s, want %d", tc.path, resp.Status, tc.code)
			}
			if tc.want == "" {
				return
			}
			var e errorBody
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || !strings.Contains(e.Error, tc.want) || strings.Contains(e.Error, "\n") || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("%s: %q (%v), Retry-After %q; want one line holding %q", tc.path, e.Error, err, resp.Header.Get("Retry-After"), tc.want)
			}
		})
	}
	// The first follower leaves: its place is free again.
	firstCancel()
	evaltest.Eventually(t, 10*time.Second, "a follower's place was not given back", func() bool {
		req, _ := http.NewRequestWithContext(ctx, "GET", b.url+"/runs/a/results?follow=1", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// runOf is a POST /runs body of n evals.
func runOf(name string, n int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"name":%q,"evals":[`, name)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"spec":{}}`)
	}
	sb.WriteString(`]}`)
	return sb.String()
}

// A POST /runs of more evals than the cap is refused with a 413 and one
// line, before anything is kept or enqueued.
func TestRunEvalsCapped(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		opts  Options
		evals int
		code  int
	}{
		{"at the cap", Options{MaxRunEvals: 5}, 5, http.StatusCreated},
		{"over the cap", Options{MaxRunEvals: 5}, 6, http.StatusRequestEntityTooLarge},
		{"over the default", Options{}, DefaultMaxRunEvals + 1, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.opts, nil)
			before, err := b.client.DBSize(t.Context()).Result()
			if err != nil {
				t.Fatal(err)
			}
			a := do(t, "POST", b.url+"/runs", runOf("capped", tc.evals))
			if a.code != tc.code {
				t.Fatalf("POST /runs of %d evals: %s, want %d", tc.evals, a, tc.code)
			}
			if tc.code == http.StatusCreated {
				return
			}
			if msg := a.errMsg(); !strings.Contains(msg, "too many evals in one request: more than") || strings.Contains(msg, "\n") {
				t.Fatalf("413 says %q; want one line saying the cap", msg)
			}
			if a := do(t, "GET", b.url+"/runs/capped", ""); a.code != http.StatusNotFound {
				t.Fatalf("a refused run was kept: %s", a)
			}
			if n, err := b.client.DBSize(t.Context()).Result(); err != nil || n != before {
				t.Fatalf("a refused run left %d keys in Redis, %d before (%v)", n, before, err)
			}
		})
	}
}

// openapi.json gives the default cap of a run's evals.
func TestOpenAPIMaxItems(t *testing.T) {
	t.Parallel()
	var doc struct {
		Components struct {
			Schemas struct {
				RunRequest struct {
					Properties struct {
						Evals struct {
							MaxItems int `json:"maxItems"`
						} `json:"evals"`
					} `json:"properties"`
				} `json:"RunRequest"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatal(err)
	}
	if got := doc.Components.Schemas.RunRequest.Properties.Evals.MaxItems; got != DefaultMaxRunEvals {
		t.Fatalf("openapi.json: RunRequest.evals maxItems %d, want DefaultMaxRunEvals %d", got, DefaultMaxRunEvals)
	}
}
