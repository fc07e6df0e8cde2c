package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// serveExecutor serves h on loopback until the test ends and registers it
// in b's pool; s, the reference executor behind h if any, joins
// b.executors so that assertNoOverlap looks at it.
func serveExecutor(t *testing.T, b *testBundle, h http.Handler, s *refexec.Server) string {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	if _, err := b.pool.Register(t.Context(), pool.Executor{URL: ts.URL}); err != nil {
		t.Fatal(err)
	}
	b.urls = append(b.urls, ts.URL)
	if s != nil {
		b.executors = append(b.executors, s)
	}
	return ts.URL
}

func newExecutor(t *testing.T, opts refexec.Options) *refexec.Server {
	t.Helper()
	s, err := refexec.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// enqueueSpec enqueues n evals of spec.
func enqueueSpec(t *testing.T, b *testBundle, n int, spec string, opts tasks.EvalOptions, timeout time.Duration) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("eval-%04d", i)
		task, err := tasks.NewEval(tasks.Eval{ID: ids[i], Spec: json.RawMessage(spec), TimeoutS: tasks.TimeoutSeconds(timeout)}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.aq.EnqueueContext(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// runFor runs w until it returns or d passes, and returns what Run
// returned: nil for a worker that started and was stopped.
func runFor(t *testing.T, w *Worker, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	return w.Run(ctx)
}

// A worker whose executor secret the pool's executors refuse does not
// start: one line says so, without the secret. An executor that does not
// answer does not keep a worker with the right secret from starting.
func TestWrongSecretIsRefusedAtStart(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-of-the-fleet"
	tests := []struct {
		name        string
		secret      string
		unreachable bool
		want        error // nil: the worker starts
	}{
		{"wrong secret", "not-the-s3cret", false, ErrUnauthorizedWorker},
		{"no secret", "", false, ErrUnauthorizedWorker},
		{"right secret, one executor unreachable", secret, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w, b := setup(t, Config{Executor: &executor.Client{Secret: []byte(tt.secret)}})
			s := newExecutor(t, refexec.Options{Secret: []byte(secret)})
			serveExecutor(t, b, s, s)
			if tt.unreachable {
				if _, err := b.pool.Register(t.Context(), pool.Executor{URL: "http://" + evaltest.FreeAddr(t)}); err != nil {
					t.Fatal(err)
				}
			}
			err := runFor(t, w, 3*time.Second)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Run = %v, want %v", err, tt.want)
			}
			if err != nil {
				if msg := err.Error(); strings.Contains(msg, "\n") || strings.Contains(msg, secret) || tt.secret != "" && strings.Contains(msg, tt.secret) || !strings.Contains(msg, "--executor-secret") {
					t.Errorf("Run's error %q: want one line naming the flag, and no secret", msg)
				}
			} else if b.logs.Count("could not check that the executor accepts this worker's signature") != 1 {
				t.Errorf("no warning for the unreachable executor:\n%s", b.logs)
			}
			if st := s.Stats(); st.MaxFence != 0 || st.Running {
				t.Errorf("the check changed the executor: %+v", st)
			}
		})
	}
}

// swapHandler serves whichever handler it holds: an executor restarted
// with another secret under the same address.
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) set(h http.Handler) { s.h.Store(&h) }
func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// An executor whose secret changes under a running worker refuses its
// calls (401): the attempts go back to their queue without spending a
// retry and without a verdict against the executor, the worker says at
// error level and in a counter that it is misconfigured, and once the
// secrets agree again every eval passes.
func TestSecretChangedAtRunTimeArchivesNothing(t *testing.T) {
	t.Parallel()
	right, other := []byte("s3cret-one"), []byte("s3cret-two")
	w, b := setup(t, Config{Concurrency: 2, Executor: &executor.Client{Secret: right}})
	before := newExecutor(t, refexec.Options{Secret: right})
	after := newExecutor(t, refexec.Options{Secret: other})
	var swap swapHandler
	swap.set(before)
	url := serveExecutor(t, b, &swap, after)
	start(t, w)
	evaltest.Eventually(t, 10*time.Second, "the worker never started", func() bool { return b.logs.Count("worker started") == 1 })
	swap.set(after)
	ids := enqueueSpec(t, b, 3, `{"sleep_ms":50}`, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	evaltest.Eventually(t, 20*time.Second, "no call was refused for its signature", func() bool {
		return after.Stats().Unauthorized >= int64(len(ids))
	})
	for _, id := range ids {
		if info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id); err != nil || info.State == asynq.TaskStateArchived || info.Retried != 0 {
			t.Fatalf("eval %s while the secrets differ: %+v, %v; want it back in its queue with no retry spent", id, info, err)
		}
	}
	swap.set(before)
	if completed, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), 90*time.Second); completed != len(ids) || archived != 0 {
		t.Fatalf("%d completed, %d archived; want all %d completed", completed, archived, len(ids))
	}
	if b.logs.Count(`"level":"error"`) == 0 || b.logs.Count("refused this worker's signature (401)") == 0 || strings.Contains(b.logs.String(), string(right)) {
		t.Errorf("want error lines saying the signature was refused, without the secret:\n%s", b.logs)
	}
	if n := testutil.ToFloat64(b.metrics.unauthorized.WithLabelValues(b.pool.Name(), url)); n == 0 {
		t.Error("evalpool_executor_unauthorized_total did not count the refused calls")
	}
	if n := testutil.ToFloat64(b.metrics.verdicts.WithLabelValues(b.pool.Name(), url, string(pool.VerdictUnavailable))); n != 0 {
		t.Errorf("%v verdicts of unavailable against an executor that only refused a secret", n)
	}
	assertPoolWhole(t, b)
}

// delayed holds every request d before the executor sees it: a slow path
// one way, from worker to executor.
func delayed(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			h.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})
}

// A path to the executor slow by 2/3 of the lease TTL one way: every
// extension comes after the executor's lease ran out, so it stops every
// attempt. No eval is archived for it: each attempt goes back to its queue
// without spending a retry, and the log names the cause and the fix, a
// longer lease TTL. A worker started with the TTL the log names runs them.
func TestSlowPathNamesTheFixAndArchivesNothing(t *testing.T) {
	t.Parallel()
	const ttl, oneWay = 1500 * time.Millisecond, time.Second
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	w, b := setupOn(t, client, Config{LeaseTTL: ttl})
	s := newExecutor(t, refexec.Options{})
	url := serveExecutor(t, b, delayed(oneWay, s), s)
	// Long enough to need several extensions: each arrives about when the
	// executor's lease ends, and one late is enough to stop the eval.
	ids := enqueueSpec(t, b, 2, `{"sleep_ms":4000}`, tasks.EvalOptions{MaxRetry: -1}, time.Minute)

	ctx, stop := context.WithCancel(t.Context())
	var runErr error
	finished := make(chan struct{})
	go func() { runErr = w.Run(ctx); close(finished) }()
	t.Cleanup(func() { stop(); <-finished }) // before Redis stops, should the test fail
	fix := regexp.MustCompile(`raise --lease-ttl to at least ([0-9.a-z]+)`)
	evaltest.Eventually(t, time.Minute, "no line named the fix", func() bool {
		for _, id := range ids {
			if info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id); err == nil && info.State == asynq.TaskStateArchived {
				t.Fatalf("eval %s archived on a slow path after %d retries: %s", id, info.Retried, info.LastErr)
			}
		}
		return b.logs.Count("round trip to "+url) >= 2 && fix.MatchString(b.logs.String())
	})
	stop()
	<-finished
	if runErr != nil {
		t.Fatal(runErr)
	}
	for _, id := range ids {
		if info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id); err != nil || info.State == asynq.TaskStateArchived || info.Retried != 0 {
			t.Fatalf("eval %s on a slow path: %+v, %v; want it back in its queue with no retry spent", id, info, err)
		}
	}
	if st := s.Stats(); st.LeaseExpired == 0 {
		t.Fatalf("executor %+v: want its lease to have stopped evals", st)
	}

	need, err := time.ParseDuration(fix.FindStringSubmatch(b.logs.String())[1])
	if err != nil || need <= ttl {
		t.Fatalf("the fix names a TTL of %v (%v); want more than %s", need, err, ttl)
	}
	t.Logf("the log names the fix: --lease-ttl %s", need)
	fixed, err := New(testParts(client, b.pool), Config{LeaseTTL: need, PollInterval: 20 * time.Millisecond, NoExecutorDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start(t, fixed)
	if completed, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), 2*time.Minute); completed != len(ids) || archived != 0 {
		t.Fatalf("with the TTL the log named (%s): %d completed, %d archived; want all %d completed", need, completed, archived, len(ids))
	}
	assertPoolWhole(t, b)
	assertNoOverlap(t, b)
}

// skewed is a wall clock off by d.
func skewed(d time.Duration) func() time.Time {
	return func() time.Time { return time.Now().Add(d) }
}

// Clocks that differ by up to a minute and more archive no eval and
// quarantine no executor: calls are dated in the executor's clock, learned
// from its answers (at start, from the signature check; for an executor
// registered later, from its first answer, whose attempt goes back without
// spending a retry). One line per executor names the clock that is off and
// by how much.
func TestClocksThatDifferArchiveNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		executor     time.Duration // its clock minus the true time
		worker       time.Duration
		ttl, timeout time.Duration
		registerLate bool   // after the worker started: the first call knows no offset
		says         string // which clock the log line blames
		first        string // what a first call handed back met; "" for none
	}{
		{"executor 30s ahead", 30 * time.Second, 0, 2 * time.Second, time.Minute, false, "the executor's clock is 30s ahead of this worker's and Redis's", ""},
		{"executor 30s ahead, met on the first call", 30 * time.Second, 0, 2 * time.Second, time.Minute, true, "the executor's clock is 30s ahead of this worker's and Redis's", string(executor.ReasonLeaseOverOnArrival)},
		{"executor 30s ahead, a 45s TTL: the deadline came early", 30 * time.Second, 0, 45 * time.Second, 32 * time.Second, true, "the executor's clock is 30s ahead of this worker's and Redis's", executor.ErrEarlyDeadline.Error()},
		{"worker 30s behind", 0, -30 * time.Second, 2 * time.Second, time.Minute, false, "this worker's clock is 30s behind Redis's and the executor's", ""},
		{"worker 90s behind", 0, -90 * time.Second, 2 * time.Second, time.Minute, true, "this worker's clock is 1m30s behind Redis's and the executor's", string(executor.ReasonLeaseOverOnArrival)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w, b := setup(t, Config{Concurrency: 4, LeaseTTL: tt.ttl, Executor: &executor.Client{Now: skewed(tt.worker)}})
			var servers []*refexec.Server
			register := func() {
				for range 2 {
					s := newExecutor(t, refexec.Options{Now: skewed(tt.executor)})
					servers = append(servers, s)
					serveExecutor(t, b, s, s)
				}
			}
			if !tt.registerLate {
				register()
			}
			start(t, w)
			if tt.registerLate {
				evaltest.Eventually(t, 10*time.Second, "the worker never started", func() bool { return b.logs.Count("worker started") == 1 })
				register()
			}
			// Longer than the lease: the executor must honour extensions.
			ids := enqueueSpec(t, b, 6, `{"sleep_ms":2500}`, tasks.EvalOptions{MaxRetry: -1}, tt.timeout)
			if completed, archived := evaltest.WaitEvalsDone(t, b.insp, len(ids), 90*time.Second); completed != len(ids) || archived != 0 {
				var errs []string
				for _, id := range ids {
					if info, err := b.insp.GetTaskInfo(tasks.QueueEvals, id); err == nil && info.State == asynq.TaskStateArchived {
						errs = append(errs, id+": "+info.LastErr)
					}
				}
				t.Fatalf("%d completed, %d archived; want all %d completed:\n%s", completed, archived, len(ids), strings.Join(errs, "\n"))
			}
			handedBack := testutil.ToFloat64(b.metrics.evals.WithLabelValues(b.pool.Name(), "clock"))
			if tt.first == "" && handedBack != 0 || tt.first != "" && (handedBack == 0 || b.logs.Count(tt.first) == 0) {
				t.Errorf("%v attempts handed back for the clock; want some that met %q, or none if that is empty:\n%s", handedBack, tt.first, b.logs)
			}
			if n := b.logs.Count(`"message":"clocks differ: `); n != len(b.urls) {
				t.Errorf("%d lines say the clocks differ, want one per executor (%d):\n%s", n, len(b.urls), b.logs)
			}
			if n := b.logs.Count(tt.says); n != len(b.urls) {
				t.Errorf("%d lines say %q, want one per executor:\n%s", n, tt.says, b.logs)
			}
			early := int64(0) // the first call's deadline, dated in the worker's clock
			if tt.first == executor.ErrEarlyDeadline.Error() {
				early = 1
			}
			for i, s := range servers {
				if st := s.Stats(); st.Overlaps != 0 || st.Timeout > early {
					t.Errorf("executor %d: %+v; want no overlap, and no eval stopped at a deadline but a first call's", i, st)
				}
			}
			assertPoolWhole(t, b)
		})
	}
}

// A Redis user that may not touch Asynq's keys (an ACL for evalpool's
// alone) is refused at start with one line, rather than a worker that logs
// NOPERM for ever while every eval waits.
func TestRedisUserWithoutAsynqKeysIsRefused(t *testing.T) {
	t.Parallel()
	const password = "pw-of-admin"
	srv := evaltest.StartACL(t, "admin", password)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "admin", Password: password})
	t.Cleanup(func() { _ = admin.Close() })
	if err := admin.Do(t.Context(), "ACL", "SETUSER", "narrow", "reset", "on", ">pw-of-narrow", "~evalpool:*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	narrow := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "narrow", Password: "pw-of-narrow"})
	t.Cleanup(func() { _ = narrow.Close() })
	w, _ := setupOn(t, narrow, Config{}, refexec.Options{})
	err := runFor(t, w, 3*time.Second)
	if !errors.Is(err, ErrRedisPermission) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "pw-of") || !strings.Contains(err.Error(), "~asynq:*") {
		t.Fatalf("Run as a user without Asynq's keys = %v; want ErrRedisPermission on one line naming the grant, no password", err)
	}

	w, b := setupOn(t, admin, Config{}, refexec.Options{})
	start(t, w)
	enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, time.Minute)
	if completed, _ := evaltest.WaitEvalsDone(t, b.insp, 1, 10*time.Second); completed != 1 {
		t.Fatal("the eval did not complete under a user with every key")
	}
}

// Attempts handed back in a row for one executor wait twice as long each
// time, from NoExecutorDelay (±50%) up to a minute, and an answer starts
// the count again: a misconfiguration nobody fixes costs each eval one
// attempt a minute at most, and never archives it.
func TestHandBacksBackOff(t *testing.T) {
	t.Parallel()
	const base = 500 * time.Millisecond
	var s streaks
	for n := range 12 {
		want := min(base<<n, maxHandBackDelay)
		if d := s.next("http://a", base); d < want/2 || d > want {
			t.Fatalf("hand-back %d waits %s, want %s to %s", n, d, want/2, want)
		}
	}
	if d := s.next("http://b", base); d > base {
		t.Fatalf("another executor's first hand-back waits %s, want at most %s", d, base)
	}
	s.reset("http://a")
	if d := s.next("http://a", base); d > base {
		t.Fatalf("after an answer, a hand-back waits %s, want at most %s", d, base)
	}
}

// completed waits until n evals of b's pool have completed.
func completed(t *testing.T, b *testBundle, n int, within time.Duration, what string) {
	t.Helper()
	queue := tasks.Queues(b.pool.Name()).Evals
	evaltest.Eventually(t, within, what, func() bool {
		q, err := b.insp.GetQueueInfo(queue)
		return err == nil && q.Completed == n
	})
	evaltest.Eventually(t, within, "the executors never came back after the evals", func() bool {
		c, err := b.pool.Counts(t.Context())
		return err == nil && c.Available == int64(len(b.urls))
	})
}

// The attacker's request of issue 21: unsigned, to an executor on
// loopback without a secret, fence 9000000000000000000, sent as a web page
// would (text/plain) or as JSON; or a fence just under what the executor
// takes for plausible. None locks the executor out: the far fence is
// refused unrecorded, and the one it records is reported in its 409, from
// which the worker raises the pool's fence past it. Five evals then run
// to completion.
func TestForgedFenceDoesNotLockTheExecutorOut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		contentType string
		fence       func() int64
	}{
		{"the attacker's, text/plain", "text/plain", func() int64 { return 9000000000000000000 }},
		{"the attacker's, JSON", "application/json", func() int64 { return 9000000000000000000 }},
		{"just under the bound", "application/json", func() int64 {
			return time.Now().Add(executor.MaxFenceAhead - time.Minute).UnixMilli()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w, b := setup(t, Config{}, refexec.Options{})
			body := fmt.Sprintf(`{"eval_id":"pwn","fence":%d,"spec":{}}`, tt.fence())
			resp, answer := evaltest.Do(t, http.MethodPost, b.urls[0]+executor.PathEvals, body, http.Header{"Content-Type": {tt.contentType}})
			t.Logf("the attack: %s %s", resp.Status, strings.TrimSpace(string(answer)))
			enqueueEvals(t, b, 5, tasks.EvalOptions{}, 10*time.Second)
			start(t, w)
			completed(t, b, 5, 30*time.Second, "the evals never completed: the executor refuses the pool's fences")
			assertPoolWhole(t, b)
			assertNoOverlap(t, b)
		})
	}
}

// 150 connections that never authenticate, trickling their headers or
// their bodies and coming back when closed, while a worker runs evals on a
// signed executor: it is never quarantined, and every eval completes.
func TestTricklingConnectionsDoNotStarveTheWorker(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-of-the-fleet"
	w, b := setup(t, Config{Executor: &executor.Client{Secret: []byte(secret)}})
	s := newExecutor(t, refexec.Options{Secret: []byte(secret)})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evaltest.Run(t, "executor", func(ctx context.Context) error { return s.Serve(ctx, l) })
	url := "http://" + l.Addr().String()
	if _, err := b.pool.Register(t.Context(), pool.Executor{URL: url}); err != nil {
		t.Fatal(err)
	}
	b.urls, b.executors = append(b.urls, url), append(b.executors, s)

	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(stop)
	for i := range 150 {
		wg.Go(func() { trickle(ctx, l.Addr().String(), i%2 == 0) })
	}
	evaltest.Eventually(t, 10*time.Second, "the trickling clients never got a 401", func() bool { return s.Stats().Unauthorized > 0 })

	enqueueSpec(t, b, 10, `{"sleep_ms":50}`, tasks.EvalOptions{}, 5*time.Second)
	start(t, w)
	completed(t, b, 10, 60*time.Second, "the evals never completed while unauthenticated clients trickled")
	if n := b.poolMetrics.Quarantines(pool.ReasonUnavailable); n != 0 {
		t.Fatalf("the executor was quarantined %v times", n)
	}
	assertPoolWhole(t, b)
}

// trickle holds connections to addr without ever authenticating: it sends
// a POST's headers one byte at a time, or its headers at once (no
// signature) and then its body one byte at a time, and dials again each
// time the executor closes it, until ctx ends.
func trickle(ctx context.Context, addr string, headers bool) {
	req := "POST " + executor.PathEvals + " HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
	for ctx.Err() == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			continue
		}
		go func() { <-ctx.Done(); c.Close() }()
		if !headers {
			if _, err := io.WriteString(c, req); err != nil {
				c.Close()
				continue
			}
		}
		tick := time.NewTicker(100 * time.Millisecond)
		for i := 0; ctx.Err() == nil; i++ {
			b := byte('x')
			if headers && i < len(req) {
				b = req[i]
			}
			if _, err := c.Write([]byte{b}); err != nil {
				break
			}
			<-tick.C
		}
		tick.Stop()
		c.Close()
	}
}
