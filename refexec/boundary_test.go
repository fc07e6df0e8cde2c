package refexec

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
)

// Every 409 says why, and the client's error carries it: a stale fence, a
// preemption, a lease that ran out, a lease over on arrival. Only a stale
// fence is "a newer lease holds the executor".
func TestRefusalsSayWhy(t *testing.T) {
	t.Parallel()
	spec := []byte(`{}`)
	tests := []struct {
		name string
		do   func(t *testing.T, s *Server, url string) error
		want executor.Reason
	}{
		{"stale fence", func(t *testing.T, s *Server, url string) error {
			c := &executor.Client{}
			if _, err := c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 5, Spec: []byte(`{"sleep_ms":0}`)}); err != nil {
				t.Fatal(err)
			}
			_, err := c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 4, Spec: spec})
			return err
		}, executor.ReasonStaleFence},
		{"preempted", func(t *testing.T, s *Server, url string) error {
			c := &executor.Client{}
			first := make(chan error, 1)
			go func() {
				_, err := c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: spec})
				first <- err
			}()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			evaltest.Eventually(t, 5*time.Second, "first eval never ran", func() bool { return s.Stats().Running })
			go func() { _, _ = c.Run(ctx, url, executor.Request{EvalID: "e", Fence: 2, Spec: spec}) }()
			return <-first
		}, executor.ReasonPreempted},
		{"lease ran out", func(t *testing.T, s *Server, url string) error {
			_, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: spec, LeaseMs: 200})
			return err
		}, executor.ReasonLeaseExpired},
		{"lease over on arrival", func(t *testing.T, s *Server, url string) error {
			_, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: spec, LeaseMs: 1000, SentAtMs: time.Now().Add(-10 * time.Second).UnixMilli()})
			return err
		}, executor.ReasonLeaseOverOnArrival},
		{"extension over on arrival", func(t *testing.T, s *Server, url string) error {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go func() {
				_, _ = (&executor.Client{}).Run(ctx, url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{"sleep_ms":60000}`), LeaseMs: 60_000})
			}()
			evaltest.Eventually(t, 10*time.Second, "the eval never ran", func() bool { return s.Stats().Running })
			// A client 10 s behind that never heard the executor's time
			// dates the extension in its own clock.
			late := &executor.Client{Now: func() time.Time { return time.Now().Add(-10 * time.Second) }}
			var err error
			evaltest.Eventually(t, 10*time.Second, "the extension was never refused", func() bool {
				err = late.Extend(t.Context(), url, "e", 1, time.Second)
				return errors.Is(err, executor.ErrFenced)
			})
			return err
		}, executor.ReasonLeaseOverOnArrival},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{Latency: 5 * time.Second})
			err := tt.do(t, s, url)
			reason, ok := executor.RefusalReason(err)
			if !errors.Is(err, executor.ErrFenced) || !ok || reason != tt.want {
				t.Fatalf("err = %v (reason %q); want ErrFenced for %q", err, reason, tt.want)
			}
			if msg := err.Error(); !strings.Contains(msg, tt.want.String()) || tt.want != executor.ReasonStaleFence && strings.Contains(msg, "newer lease") {
				t.Fatalf("err = %q; want it to say %q, and a newer lease only for a stale fence", msg, tt.want)
			}
		})
	}
}

// Every answer carries the executor's own time, 401s, 404s and 409s
// included, and an executor whose clock is off dates leases and deadlines
// by that clock: a request dated in it, as the client does once it heard
// the time, runs to its end.
func TestAnswersTellTheExecutorsTime(t *testing.T) {
	t.Parallel()
	const skew = 30 * time.Second
	_, url := setup(t, Options{Secret: testSecret, Now: func() time.Time { return time.Now().Add(skew) }})
	signed := &executor.Client{Secret: testSecret}
	for _, a := range []struct {
		name string
		send func() *http.Response
	}{
		{"health", func() *http.Response {
			r, _ := evaltest.Do(t, http.MethodGet, url+executor.PathHealth, "", nil)
			return r
		}},
		{"401", func() *http.Response {
			r, _ := evaltest.Do(t, http.MethodPost, url+executor.PathEvals, `{}`, http.Header{"Content-Type": {"application/json"}})
			return r
		}},
		{"404", func() *http.Response {
			body := `{"eval_id":"nobody","fence":1,"lease_ms":5}`
			h := http.Header{executor.SignatureHeader: {signV2(t, testSecret, url, executor.PathLease, "", body)}, "Content-Type": {"application/json"}}
			r, _ := evaltest.Do(t, http.MethodPost, url+executor.PathLease, body, h)
			return r
		}},
	} {
		before := time.Now().Add(skew).UnixMilli()
		resp := a.send()
		after := time.Now().Add(skew).UnixMilli()
		ms, err := strconv.ParseInt(resp.Header.Get(executor.TimeHeader), 10, 64)
		if err != nil || ms < before || ms > after {
			t.Errorf("%s: %s = %q, want the executor's clock, in [%d, %d]", a.name, executor.TimeHeader, resp.Header.Get(executor.TimeHeader), before, after)
		}
	}
	// The client heard the time above only through raw requests: once
	// through its own call, its next one is dated in the executor's clock.
	if err := signed.CheckSignature(t.Context(), url); err != nil {
		t.Fatal(err)
	}
	if off, ok := signed.Offset(url); !ok || off.Min > skew || off.Max < skew || off.Max-off.Min > time.Second {
		t.Fatalf("offset %+v, %t; want a tight range around %s", off, ok, skew)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	res, err := signed.Run(ctx, url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{"sleep_ms":300}`), LeaseMs: 1000})
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("a call dated in the executor's clock: %+v, %v; want passed", res, err)
	}
}

// A request held up in the network never carries its lease past its end,
// even at an executor whose clock is 30 s behind the caller's: once the
// client heard the executor's time it dates the request in that clock, so
// the executor ends the lease when it ends, not lease_ms after a late
// arrival. Dated by the caller's clock, the request would be taken as sent
// 30 s in the future, and its lease would run on the full lease_ms from
// its arrival.
func TestHeldUpRequestDoesNotStretchTheLeaseWhateverTheClocks(t *testing.T) {
	t.Parallel()
	const lease, held = 1500 * time.Millisecond, time.Second
	s, err := New(Options{Latency: time.Hour, Now: func() time.Time { return time.Now().Add(-30 * time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	var hold atomic.Bool
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hold.Load() {
			time.Sleep(held)
		}
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	c := &executor.Client{}
	if _, err := c.Health(t.Context(), ts.URL); err != nil { // the client hears the executor's time
		t.Fatal(err)
	}
	hold.Store(true)
	start := time.Now()
	_, err = c.Run(t.Context(), ts.URL, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: lease.Milliseconds()})
	took := time.Since(start)
	if reason, _ := executor.RefusalReason(err); reason != executor.ReasonLeaseExpired {
		t.Fatalf("err = %v, want the lease to have run out", err)
	}
	if took > lease+300*time.Millisecond {
		t.Fatalf("the lease ended %s after the request was sent, want by its end, %s, though the request arrived %s late", took.Round(time.Millisecond), lease, held)
	}
}
