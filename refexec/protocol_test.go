package refexec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
)

var testSecret = []byte("k3y-of-the-fleet")

// post sends one raw POST and returns its status and body.
func post(t *testing.T, url, path, body string, header map[string]string) (int, string) {
	t.Helper()
	h := http.Header{"Content-Type": {"application/json"}}
	for k, v := range header {
		h.Set(k, v)
	}
	resp, b := evaltest.Do(t, http.MethodPost, url+path, body, h)
	return resp.StatusCode, string(b)
}

// signV2 signs a POST of body to base+path now, as executor.Client does.
func signV2(t *testing.T, secret []byte, base, path, deadline, body string) string {
	t.Helper()
	u, err := neturl.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	return executor.SignV2(secret, http.MethodPost, u.Host, u.EscapedPath()+path, deadline, time.Now().UnixMilli(), []byte(body))
}

// holder is the eval the server holds, if any, white-box.
func holder(s *Server) (evalID string, live, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder == nil {
		return "", false, false
	}
	return s.holder.evalID, s.holder.live(time.Now()), true
}

func peakExecuting(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakExecuting
}

// A forged POST, whatever its fence, is refused with a 401 and changes
// nothing: a signed eval with an ordinary fence runs after it.
func TestForgedRequestsChangeNothing(t *testing.T) {
	t.Parallel()
	forged := `{"eval_id":"forged","fence":9223372036854775807,"spec":{}}`
	deadline := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	tests := []struct {
		name   string
		path   string
		header map[string]string
	}{
		{"no signature", executor.PathEvals, nil},
		{"empty signature", executor.PathEvals, map[string]string{executor.SignatureHeader: ""}},
		{"zero signature", executor.PathEvals, map[string]string{executor.SignatureHeader: "v1=" + strings.Repeat("00", 32)}},
		{"not hex", executor.PathEvals, map[string]string{executor.SignatureHeader: "v1=zz"}},
		{"no version", executor.PathEvals, map[string]string{executor.SignatureHeader: strings.TrimPrefix(executor.Sign(testSecret, "POST", executor.PathEvals, "", []byte(forged)), "v1=")}},
		{"another secret", executor.PathEvals, map[string]string{executor.SignatureHeader: executor.Sign([]byte("not-the-key"), "POST", executor.PathEvals, "", []byte(forged))}},
		{"signed for another path", executor.PathEvals, map[string]string{executor.SignatureHeader: executor.Sign(testSecret, "POST", executor.PathLease, "", []byte(forged))}},
		{"deadline added after signing", executor.PathEvals, map[string]string{executor.SignatureHeader: executor.Sign(testSecret, "POST", executor.PathEvals, "", []byte(forged)), executor.DeadlineHeader: deadline}},
		{"extension without signature", executor.PathLease, nil},
		{"v1, valid but refused", executor.PathEvals, map[string]string{executor.SignatureHeader: executor.Sign(testSecret, "POST", executor.PathEvals, "", []byte(forged))}},
		{"v2, another secret", executor.PathEvals, map[string]string{executor.SignatureHeader: "another secret"}},
		{"v2, signed for another path", executor.PathEvals, map[string]string{executor.SignatureHeader: "another path"}},
		{"v2, deadline added after signing", executor.PathEvals, map[string]string{executor.SignatureHeader: "now", executor.DeadlineHeader: deadline}},
		{"v2, body changed after signing", executor.PathEvals, map[string]string{executor.SignatureHeader: "other body"}},
		{"v2, signed an hour ago", executor.PathEvals, map[string]string{executor.SignatureHeader: "an hour ago"}},
		{"v2, signed for an hour from now", executor.PathEvals, map[string]string{executor.SignatureHeader: "in an hour"}},
		{"v2, truncated", executor.PathEvals, map[string]string{executor.SignatureHeader: "truncated"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{Secret: testSecret})
			host := strings.TrimPrefix(url, "http://")
			now := time.Now().UnixMilli()
			v2 := func(secret []byte, path string, at int64, body string) string {
				return executor.SignV2(secret, "POST", host, path, "", at, []byte(body))
			}
			switch sig := tt.header[executor.SignatureHeader]; sig {
			case "another secret":
				tt.header[executor.SignatureHeader] = v2([]byte("not-the-key"), executor.PathEvals, now, forged)
			case "another path":
				tt.header[executor.SignatureHeader] = v2(testSecret, executor.PathLease, now, forged)
			case "now":
				tt.header[executor.SignatureHeader] = v2(testSecret, executor.PathEvals, now, forged)
			case "other body":
				tt.header[executor.SignatureHeader] = v2(testSecret, executor.PathEvals, now, `{"eval_id":"forged","fence":1,"spec":{}}`)
			case "an hour ago":
				tt.header[executor.SignatureHeader] = v2(testSecret, executor.PathEvals, now-time.Hour.Milliseconds(), forged)
			case "in an hour":
				tt.header[executor.SignatureHeader] = v2(testSecret, executor.PathEvals, now+time.Hour.Milliseconds(), forged)
			case "truncated":
				tt.header[executor.SignatureHeader] = v2(testSecret, executor.PathEvals, now, forged)[:80]
			}
			code, body := post(t, url, tt.path, forged, tt.header)
			var answer struct{ Error string }
			if code != http.StatusUnauthorized || json.Unmarshal([]byte(body), &answer) != nil || answer.Error == "" {
				t.Fatalf("forged POST %s: %d %s, want a 401 with a JSON error", tt.path, code, body)
			}
			if st := s.Stats(); st != (Stats{Unauthorized: 1}) {
				t.Fatalf("stats after a forged request = %+v, want only unauthorized 1", st)
			}
			res, err := (&executor.Client{Secret: testSecret}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 10_000})
			if err != nil || res.Status != executor.StatusPassed {
				t.Fatalf("signed eval with fence 1 after the forgery: %+v, %v", res, err)
			}
		})
	}
}

// A forgery while an eval runs neither preempts it nor touches its lease.
func TestForgeryDoesNotTouchRunningEval(t *testing.T) {
	t.Parallel()
	s, url := setup(t, Options{Secret: testSecret, Latency: 500 * time.Millisecond})
	c := &executor.Client{Secret: testSecret}
	var wg sync.WaitGroup
	var res executor.Result
	var err error
	wg.Go(func() {
		res, err = c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 5, Spec: []byte(`{}`), LeaseMs: 10_000})
	})
	evaltest.Eventually(t, 5*time.Second, "eval never started", func() bool { return s.Stats().Running })
	for _, f := range []struct{ path, body string }{
		{executor.PathEvals, `{"eval_id":"x","fence":9223372036854775807,"spec":{}}`},
		{executor.PathLease, `{"eval_id":"e","fence":5,"lease_ms":1}`},
	} {
		if code, body := post(t, url, f.path, f.body, nil); code != http.StatusUnauthorized {
			t.Fatalf("forged %s: %d %s", f.path, code, body)
		}
	}
	wg.Wait()
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("the running eval: %+v, %v; want it to pass, untouched", res, err)
	}
	if st := s.Stats(); st.Unauthorized != 2 || st.Preempted != 0 || st.LeaseExpired != 0 || st.MaxFence != 5 || st.Passed != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name               string
		server, client     []byte
		wantUnauthorized   bool
		wantServerCounting int64
	}{
		{"both share the secret", testSecret, testSecret, false, 0},
		{"client without the secret", testSecret, nil, true, 2},
		{"client with another secret", testSecret, []byte("another"), true, 2},
		{"server without a secret accepts anyone", nil, nil, false, 0},
		{"server without a secret ignores a signature", nil, testSecret, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{Secret: tt.server})
			c := &executor.Client{Secret: tt.client}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a deadline header, signed too
			defer cancel()
			_, runErr := c.Run(ctx, url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
			extErr := c.Extend(t.Context(), url, "e", 1, time.Second)
			if tt.wantUnauthorized {
				if !errors.Is(runErr, executor.ErrUnauthorized) || !errors.Is(extErr, executor.ErrUnauthorized) {
					t.Fatalf("Run: %v; Extend: %v; want ErrUnauthorized", runErr, extErr)
				}
			} else if runErr != nil || !errors.Is(extErr, executor.ErrNotRunning) {
				t.Fatalf("Run: %v; Extend: %v; want the eval to pass and ErrNotRunning", runErr, extErr)
			}
			if got := s.Stats().Unauthorized; got != tt.wantServerCounting {
				t.Fatalf("unauthorized = %d, want %d", got, tt.wantServerCounting)
			}
			// Reading stays open.
			if _, err := c.Health(t.Context(), url); err != nil {
				t.Fatal(err)
			}
			resp, err := http.Get(url + executor.PathStats)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s", executor.PathStats, resp.Status)
			}
		})
	}
}

// A fleet's executors are mounted under a prefix; the signature covers the
// path the client sent, prefix included.
func TestFleetAuthentication(t *testing.T) {
	t.Parallel()
	f, err := NewFleet(4, Options{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(f)
	defer ts.Close()
	c := &executor.Client{Secret: testSecret}
	if _, err := c.Run(t.Context(), ts.URL+FleetPath(3), executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	// Signed for executor 3, replayed to executor 2.
	body := `{"eval_id":"e","fence":2,"spec":{}}`
	sig := signV2(t, testSecret, ts.URL+FleetPath(3), executor.PathEvals, "", body)
	if code, answer := post(t, ts.URL+FleetPath(2), executor.PathEvals, body, map[string]string{executor.SignatureHeader: sig}); code != http.StatusUnauthorized {
		t.Fatalf("replayed to another executor: %d %s", code, answer)
	}
	if code, answer := post(t, ts.URL+FleetPath(3), executor.PathEvals, body, map[string]string{executor.SignatureHeader: sig}); code != http.StatusOK {
		t.Fatalf("sent where signed: %d %s", code, answer)
	}
	if st := f.Stats(); st.Passed != 2 || st.Unauthorized != 1 {
		t.Fatalf("fleet stats %+v", st)
	}
}

// An eval whose lease passes without an extension is stopped there, long
// before its deadline, and its command's processes with it.
func TestLeaseExpiryStopsEval(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
	}{
		{"simulated", Options{Latency: 5 * time.Second}},
		{"command", Options{Exec: "sleep 5 & wait"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, tt.opts)
			start := time.Now()
			_, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 200})
			took := time.Since(start)
			if !errors.Is(err, executor.ErrFenced) || !strings.Contains(err.Error(), "lease expired") {
				t.Fatalf("err = %v, want ErrFenced saying the lease expired", err)
			}
			if took < 200*time.Millisecond || took > 2*time.Second {
				t.Fatalf("answered after %s, want soon after the 200ms lease", took)
			}
			evaltest.Eventually(t, 5*time.Second, "executor still busy", func() bool { return !s.Stats().Running })
			if st := s.Stats(); st.LeaseExpired != 1 || st.Served != 0 || st.Preempted != 0 {
				t.Fatalf("stats = %+v, want lease expired 1 and nothing served", st)
			}
		})
	}
}

// Regular extensions keep an eval that outlives its first lease running to
// its end.
func TestExtensionsKeepEvalAlive(t *testing.T) {
	t.Parallel()
	s, url := setup(t, Options{Latency: time.Second})
	c := &executor.Client{}
	done := make(chan struct{})
	var extErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			// ErrNotRunning: the eval has not arrived yet, or is over.
			if err := c.Extend(t.Context(), url, "e", 1, 250*time.Millisecond); err != nil && !errors.Is(err, executor.ErrNotRunning) {
				extErr = err
				return
			}
		}
	})
	res, err := c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 250})
	close(done)
	wg.Wait()
	if err != nil || res.Status != executor.StatusPassed || extErr != nil {
		t.Fatalf("Run = %+v, %v; extension: %v", res, err, extErr)
	}
	if st := s.Stats(); st.LeaseExpired != 0 || st.Extensions < 10 || st.Passed != 1 {
		t.Fatalf("stats = %+v, want no expiry, many extensions, one pass", st)
	}
}

func TestExtend(t *testing.T) {
	t.Parallel()
	// stopDelay keeps a cancelled eval in place, stopping, for a while.
	s, url := setup(t, Options{Latency: time.Hour, stopDelay: 2 * time.Second})
	c := &executor.Client{}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		_, _ = c.Run(ctx, url, executor.Request{EvalID: "e", Fence: 5, Spec: []byte(`{}`), LeaseMs: 10_000})
	})
	evaltest.Eventually(t, 5*time.Second, "eval never started", func() bool { return s.Stats().MaxFence == 5 })

	tests := []struct {
		name      string
		evalID    string
		fence     int64
		remaining time.Duration
		want      error // nil: extended
	}{
		{"the running eval", "e", 5, time.Minute, nil},
		{"a fence below the highest seen", "e", 4, time.Minute, executor.ErrFenced},
		{"a fence never seen", "e", 6, time.Minute, executor.ErrNotRunning},
		{"another eval under the fence", "other", 5, time.Minute, executor.ErrNotRunning},
	}
	for _, tt := range tests {
		err := c.Extend(t.Context(), url, tt.evalID, tt.fence, tt.remaining)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: Extend = %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := c.Extend(t.Context(), url, "e", 5, 0); err == nil || errors.Is(err, executor.ErrFenced) || errors.Is(err, executor.ErrNotRunning) {
		t.Errorf("Extend with no time left = %v, want an error of its own", err)
	}
	if st := s.Stats(); st.Extensions != 1 || st.MaxFence != 5 || st.Fenced != 0 {
		t.Errorf("stats = %+v, want one extension and the fence untouched", st)
	}

	// Its caller leaves: the eval is stopping, and cannot be extended.
	cancel()
	evaltest.Eventually(t, 5*time.Second, "the server never saw the caller leave", func() bool {
		_, live, ok := holder(s)
		return ok && !live
	})
	if err := c.Extend(t.Context(), url, "e", 5, time.Minute); !errors.Is(err, executor.ErrFenced) || !strings.Contains(err.Error(), "stopping") {
		t.Errorf("Extend of a stopping eval = %v, want ErrFenced", err)
	}
	evaltest.Eventually(t, 5*time.Second, "eval never stopped", func() bool { return !s.Stats().Running })
	if err := c.Extend(t.Context(), url, "e", 5, time.Minute); !errors.Is(err, executor.ErrNotRunning) {
		t.Errorf("Extend of a finished eval = %v, want ErrNotRunning", err)
	}
}

// An extension cannot revive a lease that has passed.
func TestExtendAfterExpiry(t *testing.T) {
	t.Parallel()
	s, url := setup(t, Options{Latency: time.Hour, stopDelay: 2 * time.Second})
	c := &executor.Client{}
	var wg sync.WaitGroup
	var err error
	wg.Go(func() {
		_, err = c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 100})
	})
	evaltest.Eventually(t, 5*time.Second, "lease never expired", func() bool { return s.Stats().LeaseExpired == 1 })
	if err := c.Extend(t.Context(), url, "e", 1, time.Minute); !errors.Is(err, executor.ErrFenced) || !strings.Contains(err.Error(), "lease expired") {
		t.Errorf("Extend after expiry = %v, want ErrFenced", err)
	}
	wg.Wait()
	if !errors.Is(err, executor.ErrFenced) {
		t.Fatalf("Run = %v, want ErrFenced", err)
	}
}

// An overlap is a newcomer for another eval that arrives while the holder's
// lease is live, and only that: the newcomer is refused as busy and the
// holder runs on. Without a lease, the holder is preempted instead.
func TestOverlaps(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		first      executor.Request
		second     string // eval ID of the newcomer
		loseFirst  func(t *testing.T, s *Server, cancelCaller context.CancelFunc)
		wantFirst  error
		wantCounts Stats // Overlaps, Busy, Preempted, LeaseExpired
	}{
		{
			name:       "another eval while the lease is live",
			first:      executor.Request{EvalID: "a", LeaseMs: 60_000},
			second:     "b",
			wantFirst:  context.Canceled, // it ran on until its caller left
			wantCounts: Stats{Overlaps: 1, Busy: 1},
		},
		{
			name:       "another eval, first sent without a lease",
			first:      executor.Request{EvalID: "a"},
			second:     "b",
			wantFirst:  executor.ErrFenced,
			wantCounts: Stats{Overlaps: 1, Preempted: 1},
		},
		{
			name:       "a newer attempt of the same eval takes over",
			first:      executor.Request{EvalID: "a", LeaseMs: 60_000},
			second:     "a",
			wantFirst:  executor.ErrFenced,
			wantCounts: Stats{Preempted: 1},
		},
		{
			name:   "another eval after the first's lease expired",
			first:  executor.Request{EvalID: "a", LeaseMs: 100},
			second: "b",
			loseFirst: func(t *testing.T, s *Server, _ context.CancelFunc) {
				evaltest.Eventually(t, 5*time.Second, "lease never expired", func() bool { return s.Stats().LeaseExpired == 1 })
			},
			wantFirst:  executor.ErrFenced,
			wantCounts: Stats{LeaseExpired: 1},
		},
		{
			name:   "another eval after the first's caller left",
			first:  executor.Request{EvalID: "a", LeaseMs: 60_000},
			second: "b",
			loseFirst: func(t *testing.T, s *Server, cancelCaller context.CancelFunc) {
				cancelCaller()
				evaltest.Eventually(t, 5*time.Second, "the server never saw the caller leave", func() bool {
					_, live, ok := holder(s)
					return ok && !live
				})
			},
			wantFirst: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// stopDelay: a cancelled eval takes 1s to stop, so the newcomer
			// finds the first still there however it was lost.
			s, url := setup(t, Options{Latency: time.Hour, stopDelay: time.Second})
			c := &executor.Client{}
			first := tt.first
			first.Fence, first.Spec = 1, []byte(`{}`)
			ctx1, cancel1 := context.WithCancel(t.Context())
			defer cancel1()
			ctx2, cancel2 := context.WithCancel(t.Context())
			defer cancel2()
			var wg sync.WaitGroup
			var err1 error
			wg.Go(func() { _, err1 = c.Run(ctx1, url, first) })
			evaltest.Eventually(t, 5*time.Second, "first eval never started", func() bool { return s.Stats().MaxFence == 1 })
			if tt.loseFirst != nil {
				tt.loseFirst(t, s, cancel1)
			}
			if id, _, ok := holder(s); !ok || id != "a" {
				t.Fatalf("the first eval is gone before the newcomer came: the case tests nothing")
			}
			counts := func() Stats {
				st := s.Stats()
				return Stats{Overlaps: st.Overlaps, Busy: st.Busy, Preempted: st.Preempted, LeaseExpired: st.LeaseExpired}
			}
			if tt.wantCounts.Busy > 0 {
				_, err := c.Run(ctx2, url, executor.Request{EvalID: tt.second, Fence: 2, Spec: []byte(`{}`)})
				if !errors.Is(err, executor.ErrBusy) {
					t.Fatalf("newcomer: %v, want ErrBusy", err)
				}
				if got := counts(); got != tt.wantCounts || s.Stats().MaxFence != 1 {
					t.Errorf("counts = %+v, max fence %d; want %+v and the fence untouched", got, s.Stats().MaxFence, tt.wantCounts)
				}
				if id, live, ok := holder(s); !ok || id != "a" || !live {
					t.Fatal("the refused newcomer disturbed the holder")
				}
				cancel1()
				wg.Wait()
				if !errors.Is(err1, tt.wantFirst) {
					t.Errorf("first eval: %v, want %v", err1, tt.wantFirst)
				}
				return
			}
			wg.Go(func() { _, _ = c.Run(ctx2, url, executor.Request{EvalID: tt.second, Fence: 2, Spec: []byte(`{}`)}) })
			evaltest.Eventually(t, 5*time.Second, "newcomer never admitted", func() bool { return s.Stats().MaxFence == 2 })
			if got := counts(); got != tt.wantCounts {
				t.Errorf("overlaps, busy, preempted, lease expired = %+v, want %+v", got, tt.wantCounts)
			}
			// The newcomer runs once the first has stopped, never beside it.
			evaltest.Eventually(t, 10*time.Second, "newcomer never ran", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				return s.holder != nil && s.holder.fence == 2 && s.holder.executing
			})
			// The first has stopped, but its answer may still be on its way:
			// cancelling its caller now would race that answer.
			cancel2()
			wg.Wait()
			if !errors.Is(err1, tt.wantFirst) {
				t.Errorf("first eval: %v, want %v", err1, tt.wantFirst)
			}
			if p := peakExecuting(s); p != 1 {
				t.Errorf("%d evals ran at once", p)
			}
		})
	}
}

// The reference executor names itself at /healthz, where the client reads
// it.
func TestHealth(t *testing.T) {
	t.Parallel()
	_, url := setup(t, Options{InstanceID: "exec-a"})
	c := &executor.Client{}
	h, err := c.Health(t.Context(), url)
	if want := (executor.Health{Status: "ok", InstanceID: "exec-a"}); err != nil || h != want {
		t.Fatalf("Health = %+v, %v; want %+v", h, err, want)
	}
	if err := c.Healthy(t.Context(), url); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
}

// Every executor, in a fleet or not, has an ID of its own.
func TestInstanceIDs(t *testing.T) {
	t.Parallel()
	f, err := NewFleet(3, Options{})
	if err != nil {
		t.Fatal(err)
	}
	named, err := NewFleet(2, Options{InstanceID: "box7"})
	if err != nil {
		t.Fatal(err)
	}
	lone, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range append(f.Servers, lone) {
		id := s.InstanceID()
		if len(id) < 16 || seen[id] {
			t.Fatalf("instance ID %q: empty, short or seen before", id)
		}
		seen[id] = true
	}
	ts := httptest.NewServer(named)
	defer ts.Close()
	for i, want := range []string{"box7-0", "box7-1"} {
		h, err := (&executor.Client{}).Health(t.Context(), ts.URL+FleetPath(i))
		if err != nil || h.InstanceID != want || h.Status != "ok" {
			t.Fatalf("executor %d: %+v, %v; want instance %s", i, h, err, want)
		}
	}
}

func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, path, body string
		want             int
	}{
		{"not JSON", executor.PathEvals, `{`, http.StatusBadRequest},
		{"no eval ID", executor.PathEvals, `{"fence":1,"spec":{}}`, http.StatusBadRequest},
		{"no spec", executor.PathEvals, `{"eval_id":"e","fence":1}`, http.StatusBadRequest},
		{"negative lease", executor.PathEvals, `{"eval_id":"e","fence":1,"spec":{},"lease_ms":-1}`, http.StatusBadRequest},
		{"lease past the bound", executor.PathEvals, `{"eval_id":"e","fence":1,"spec":{},"lease_ms":` + strconv.FormatInt(math.MaxInt64, 10) + `}`, http.StatusBadRequest},
		{"extension without lease", executor.PathLease, `{"eval_id":"e","fence":1}`, http.StatusBadRequest},
		{"extension without eval", executor.PathLease, `{"fence":1,"lease_ms":5}`, http.StatusBadRequest},
		{"extension not JSON", executor.PathLease, `[]`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{})
			if code, body := post(t, url, tt.path, tt.body, nil); code != tt.want || !strings.Contains(body, `"error"`) {
				t.Fatalf("%d %s, want %d with a JSON error", code, body, tt.want)
			}
			if st := s.Stats(); st != (Stats{}) {
				t.Fatalf("stats = %+v, want untouched", st)
			}
		})
	}
}

// A simulated eval takes the spec's sleep_ms when it names one, else the
// server's latency.
func TestSpecSleepOverridesLatency(t *testing.T) {
	t.Parallel()
	s, err := New(Options{Latency: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	res, err := (&executor.Client{}).Run(ctx, ts.URL, executor.Request{EvalID: "e", Fence: 1, Spec: json.RawMessage(`{"sleep_ms":50}`)})
	if err != nil || res.Status != executor.StatusPassed || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("Run = %+v, %v after %s; want passed after 50ms", res, err, time.Since(start))
	}
}

// A request delayed in the network, or replayed, carries its lease no
// further than the caller's clock allows: the lease ends at sent_at +
// lease_ms by the executor's clock when that is earlier than the arrival
// plus lease_ms, and a lease already over on arrival is refused untouched.
func TestDelayedOrReplayedLeaseIsCapped(t *testing.T) {
	t.Parallel()
	s, url := setup(t, Options{Latency: time.Hour})
	c := &executor.Client{}
	now := time.Now().UnixMilli()
	_, err := c.Run(t.Context(), url, executor.Request{EvalID: "late", Fence: 1, Spec: []byte(`{}`), LeaseMs: 1000, SentAtMs: now - 2000})
	if !errors.Is(err, executor.ErrFenced) || !strings.Contains(err.Error(), "lease was over when the request arrived") || s.Stats().MaxFence != 0 {
		t.Fatalf("a request whose lease ended before it arrived: %v, max fence %d; want refused untouched", err, s.Stats().MaxFence)
	}

	start := time.Now()
	_, err = c.Run(t.Context(), url, executor.Request{EvalID: "delayed", Fence: 2, Spec: []byte(`{}`), LeaseMs: 1000, SentAtMs: time.Now().UnixMilli() - 800})
	if took := time.Since(start); !errors.Is(err, executor.ErrFenced) || took > 700*time.Millisecond {
		t.Fatalf("a request delayed 800ms with a 1s lease: %v after %s; want its lease over about 200ms after it arrived", err, took)
	}

	// A caller whose clock runs an hour ahead gains nothing: the lease still
	// ends lease_ms after the request arrived.
	start = time.Now()
	_, err = c.Run(t.Context(), url, executor.Request{EvalID: "ahead", Fence: 4, Spec: []byte(`{}`), LeaseMs: 300, SentAtMs: time.Now().Add(time.Hour).UnixMilli()})
	if took := time.Since(start); !errors.Is(err, executor.ErrFenced) || took > 2*time.Second {
		t.Fatalf("a caller an hour ahead with a 300ms lease: %v after %s; want its lease over about 300ms after it arrived", err, took)
	}

	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() {
		_, runErr = c.Run(t.Context(), url, executor.Request{EvalID: "held", Fence: 5, Spec: []byte(`{}`), LeaseMs: 500})
	})
	evaltest.Eventually(t, 5*time.Second, "eval never started", func() bool { return s.Stats().MaxFence == 5 })
	err = c.Extend(t.Context(), url, "held", 5, time.Second) // fresh: fine
	if err != nil {
		t.Fatalf("a fresh extension: %v", err)
	}
	replayed, _ := json.Marshal(executor.Extension{EvalID: "held", Fence: 5, LeaseMs: 1000, SentAtMs: time.Now().UnixMilli() - 5000})
	resp, err := http.Post(url+executor.PathLease, "application/json", bytes.NewReader(replayed))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("a replayed extension answered %s, want 409", resp.Status)
	}
	wg.Wait() // the fresh extension's second ran out: the eval was stopped
	if !errors.Is(runErr, executor.ErrFenced) || s.Stats().LeaseExpired < 3 {
		t.Fatalf("held eval: %v, stats %+v; want its lease to have run out", runErr, s.Stats())
	}
}
