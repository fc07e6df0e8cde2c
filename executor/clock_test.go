package executor

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// clockExecutor answers every eval with its status and, when it tells
// time, its clock off by skew; it keeps what each request said of time.
type clockExecutor struct {
	skew   time.Duration
	tells  bool
	status int

	mu   sync.Mutex
	seen []dated
}

// dated is what a request said of time, beside the executor's clock when
// it came.
type dated struct{ sentAt, deadline, now int64 }

func (e *clockExecutor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now().Add(e.skew).UnixMilli()
	var req Request
	_ = json.NewDecoder(r.Body).Decode(&req)
	deadline, _ := strconv.ParseInt(r.Header.Get(DeadlineHeader), 10, 64)
	e.mu.Lock()
	e.seen = append(e.seen, dated{req.SentAtMs, deadline, now})
	e.mu.Unlock()
	if e.tells {
		w.Header().Set(TimeHeader, strconv.FormatInt(now, 10))
	}
	w.WriteHeader(e.status)
	_, _ = w.Write([]byte(`{"status":"passed"}`))
}

func (e *clockExecutor) last() dated {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seen[len(e.seen)-1]
}

// Once an executor told its time, a client dates sent_at_ms no later than
// the executor's clock (so a lease only shortens) and the deadline no
// earlier (so it never comes early there), within a round trip, whatever
// the client's own clock says. An executor that never told its time is
// sent the client's clock, as before.
func TestRequestsAreDatedInTheExecutorsClock(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		executor, mine time.Duration // each clock minus the true time
		tells          bool
	}{
		{"executor 30s ahead", 30 * time.Second, 0, true},
		{"client 90s behind", 0, -90 * time.Second, true},
		{"both off", -5 * time.Second, 40 * time.Second, true},
		{"an executor that never tells", 30 * time.Second, 0, false},
	}
	// A round trip on a loaded machine can take a second; the clocks above
	// differ by 30 s or more, so 5 s still tells the executor's clock from
	// another.
	const slack = 5 * time.Second
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := &clockExecutor{skew: tt.executor, tells: tt.tells, status: http.StatusOK}
			ts := httptest.NewServer(e)
			defer ts.Close()
			c := &Client{Now: func() time.Time { return time.Now().Add(tt.mine) }}
			run := func() dated {
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				if _, err := c.Run(ctx, ts.URL, Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 1000}); err != nil {
					t.Fatal(err)
				}
				return e.last()
			}
			run()
			got := run()
			if !tt.tells {
				if _, ok := c.Offset(ts.URL); ok || abs64(got.sentAt-(got.now-tt.executor.Milliseconds()+tt.mine.Milliseconds())) > slack.Milliseconds() {
					t.Fatalf("sent_at_ms %d at executor time %d: want the client's clock, and no offset known", got.sentAt, got.now)
				}
				return
			}
			if got.sentAt > got.now || got.sentAt < got.now-slack.Milliseconds() {
				t.Errorf("sent_at_ms %d at executor time %d: want it no later, and within %s", got.sentAt, got.now, slack)
			}
			if want := got.now + time.Minute.Milliseconds(); got.deadline < want-slack.Milliseconds() || got.deadline > want+slack.Milliseconds() {
				t.Errorf("deadline %d at executor time %d: want a minute on, in its clock", got.deadline, got.now)
			}
			if off, ok := c.Offset(ts.URL); !ok || off.Min > tt.executor-tt.mine || off.Max < tt.executor-tt.mine-time.Millisecond {
				t.Errorf("offset %+v; want a range around %s", off, tt.executor-tt.mine)
			}
		})
	}
}

func abs64(n int64) int64 { return max(n, -n) }

// A 504 stamped past the deadline the executor was sent, well before the
// caller's own, came from a clock ahead: the executor is not at fault
// (ErrEarlyDeadline, not Unavailable). A 504 without a stamp is a gateway's,
// unavailable as any 5xx.
func TestEarlyDeadlineIsNotUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		tells bool
		want  error
	}{
		{"stamped past the deadline", true, ErrEarlyDeadline},
		{"no stamp", false, ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The executor's clock is an hour ahead, so its stamp is past a
			// deadline a minute away by the caller's.
			ts := httptest.NewServer(&clockExecutor{skew: time.Hour, tells: tt.tells, status: http.StatusGatewayTimeout})
			defer ts.Close()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			_, err := (&Client{}).Run(ctx, ts.URL, Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
			if !errors.Is(err, tt.want) || (tt.want == ErrEarlyDeadline) == Unavailable(err) {
				t.Fatalf("err = %v (unavailable: %t), want %v", err, Unavailable(err), tt.want)
			}
		})
	}
}
