package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

type bundle struct {
	client    *redis.Client
	pool      *pool.Pool
	handler   *Handler
	url       string
	insp      *asynq.Inspector
	executors []*refexec.Server
	execURLs  []string
}

// setup serves the API on a Redis of its own (Asynq's queues are per
// Redis), for a pool with the executors given registered: reference
// executors over loopback HTTP, labelled as given.
func setup(t *testing.T, opts Options, execs ...map[string]string) *bundle {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	c, err := evalpool.NewClient(client, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Pool("apitest")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Configure(t.Context(), pool.Settings{LeaseGrace: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	b := &bundle{client: client, pool: p, insp: asynq.NewInspectorFromRedisClient(client)}
	for _, ls := range execs {
		s, err := refexec.New(refexec.Options{Latency: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(s)
		t.Cleanup(ts.Close)
		if _, err := p.Register(t.Context(), pool.Executor{URL: ts.URL, Labels: ls}); err != nil {
			t.Fatal(err)
		}
		b.executors, b.execURLs = append(b.executors, s), append(b.execURLs, ts.URL)
	}
	opts.Client, opts.Pool = c, p.Name()
	if opts.FollowInterval == 0 {
		opts.FollowInterval = 20 * time.Millisecond
	}
	if b.handler, err = New(opts); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(b.handler)
	t.Cleanup(ts.Close)
	b.url = ts.URL + Prefix
	return b
}

// startWorker runs a real worker on the bundle's pool until the test ends.
func startWorker(t *testing.T, b *bundle, concurrency int) {
	t.Helper()
	w, err := evalpool.NewWorker(b.client, evalpool.WorkerConfig{Pools: []string{b.pool.Name()}, Config: worker.Config{
		Concurrency: concurrency, Cleanup: worker.CleanupInline,
		PollInterval: 20 * time.Millisecond, NoExecutorDelay: 20 * time.Millisecond,
		RetryDelay: func(int) time.Duration { return 10 * time.Millisecond },
	}})
	if err != nil {
		t.Fatal(err)
	}
	evaltest.Run(t, "worker", w.Run)
}

type answer struct {
	code   int
	header http.Header
	body   []byte
}

// errMsg is the answer's {"error"}, or "" when it has none.
func (a answer) errMsg() string {
	var e errorBody
	_ = json.Unmarshal(a.body, &e)
	return e.Error
}

func (a answer) String() string { return fmt.Sprintf("%d %s", a.code, bytes.TrimSpace(a.body)) }

func do(t *testing.T, method, url, body string) answer {
	t.Helper()
	h := http.Header{}
	if body != "" {
		h.Set("Content-Type", "application/json")
	}
	resp, b := evaltest.Do(t, method, url, body, h)
	return answer{code: resp.StatusCode, header: resp.Header, body: b}
}

// decodeAs checks the answer's status and decodes its body.
func decodeAs[T any](t *testing.T, a answer, code int) T {
	t.Helper()
	var v T
	if a.code != code {
		t.Fatalf("status %s, want %d", a, code)
	}
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	return v
}

// readLines parses an NDJSON body line by line.
func readLines(t *testing.T, r io.Reader, each func(ResultLine)) {
	t.Helper()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line ResultLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if line.EvalID == "" {
			t.Fatalf("line %q is no eval's (the stream's error line?)", sc.Text())
		}
		each(line)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	c, err := evalpool.NewClient(evaltest.Client(t), evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no client", Options{Pool: "p"}, "Options.Client is required"},
		{"negative body limit", Options{Client: c, MaxBodyBytes: -1}, "MaxBodyBytes may not be negative"},
		{"negative interval", Options{Client: c, FollowInterval: -time.Second}, "FollowInterval may not be negative"},
		{"negative eval cap", Options{Client: c, MaxRunEvals: -1}, "MaxRunEvals may not be negative"},
		{"negative followers per run", Options{Client: c, MaxFollowersPerRun: -1}, "MaxFollowersPerRun may not be negative"},
		{"negative followers", Options{Client: c, MaxFollowers: -1}, "MaxFollowers may not be negative"},
		{"zero values", Options{Client: c}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(tc.opts)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.want == "" && (h.opts.MaxBodyBytes != DefaultMaxBodyBytes || h.opts.FollowInterval != DefaultFollowInterval || h.opts.Pool != pool.DefaultName ||
				h.opts.MaxRunEvals != DefaultMaxRunEvals || h.opts.MaxFollowersPerRun != DefaultMaxFollowersPerRun || h.opts.MaxFollowers != DefaultMaxFollowers):
				t.Fatalf("defaults not applied: %+v", h.opts)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
		})
	}
}

// A run through a real worker: submitted, followed from before its first
// eval starts until its last ends, then its progress, summary, results
// (NDJSON), list entry, and a comparison with a second run.
func TestRunLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil, map[string]string{"gpu": "a100"})
	body := `{"name":"nightly","timeout_s":30,"max_retry":1,"evals":[
		{"eval_id":"add","spec":{"grade":"passed","sleep_ms":50}},
		{"eval_id":"mul","spec":{"grade":"failed","sleep_ms":50}},
		{"spec":{"grade":"passed","sleep_ms":50},"require":{"gpu":"a100"}}]}`
	created := decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", body), http.StatusCreated)
	if created != (RunCreated{Name: "nightly", Size: 3, Pool: "apitest"}) {
		t.Fatalf("created %+v", created)
	}

	// Follow before the worker runs: nothing ended yet, then each eval once,
	// as it ends.
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.url+"/runs/nightly/results?follow=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("follow: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	startWorker(t, b, 2)
	last := map[string]ResultLine{}
	readLines(t, resp.Body, func(l ResultLine) {
		if _, seen := last[l.EvalID]; seen {
			t.Errorf("%s ended twice in the stream", l.EvalID)
		}
		if !l.Ended() {
			t.Errorf("a followed line of %s is %s, not its end", l.EvalID, l.Status)
		}
		last[l.EvalID] = l
	})
	// The stream ended by itself (the body reached EOF before the timeout).
	if ctx.Err() != nil {
		t.Fatal("follow did not end when the run did")
	}
	if len(last) != 3 || last["nightly/add"].Status != run.Passed || last["nightly/mul"].Status != run.Failed || last["nightly/3"].Status != run.Passed {
		t.Fatalf("follow ended with %+v", last)
	}
	if ex := last["nightly/3"].Executor; ex != b.execURLs[1] {
		t.Fatalf("eval 3 requires gpu=a100 and ran on %s, want %s", ex, b.execURLs[1])
	}

	c := decodeAs[run.Counts](t, do(t, "GET", b.url+"/runs/nightly/progress", ""), 200)
	if c != (run.Counts{Size: 3, Passed: 2, Failed: 1}) {
		t.Fatalf("progress %+v", c)
	}
	s := decodeAs[run.Summary](t, do(t, "GET", b.url+"/runs/nightly", ""), 200)
	if s.Name != "nightly" || s.Pool != "apitest" || s.Counts != c || s.PassRate < 0.66 || s.PassRate > 0.67 || len(s.Failures) != 1 || s.Failures[0].Key != "mul" || s.Compare != nil {
		t.Fatalf("summary %+v", s)
	}

	// Results without follow: one line per eval, in order, ended.
	a := do(t, "GET", b.url+"/runs/nightly/results", "")
	var lines []ResultLine
	readLines(t, bytes.NewReader(a.body), func(l ResultLine) { lines = append(lines, l) })
	if a.code != 200 || len(lines) != 3 || lines[0].Key != "add" || lines[1].Status != run.Failed || lines[2].EvalID != "nightly/3" || lines[2].Duration <= 0 {
		t.Fatalf("results %s", a)
	}

	// A second run where mul passes: the comparison says so.
	decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"name":"nightly-2","evals":[{"eval_id":"add","spec":{"grade":"failed"}},{"eval_id":"mul","spec":{"grade":"passed"}}]}`), 201)
	evaltest.Eventually(t, 30*time.Second, "run nightly-2 never ended", func() bool {
		c := decodeAs[run.Counts](t, do(t, "GET", b.url+"/runs/nightly-2/progress", ""), 200)
		return c.Done() == 2
	})
	s = decodeAs[run.Summary](t, do(t, "GET", b.url+"/runs/nightly-2?compare=nightly", ""), 200)
	if s.Compare == nil || !slices.Equal(s.Compare.NewlyFailing, []string{"add"}) || !slices.Equal(s.Compare.NewlyPassing, []string{"mul"}) {
		t.Fatalf("compare %+v", s.Compare)
	}

	list := decodeAs[RunList](t, do(t, "GET", b.url+"/runs", ""), 200)
	if len(list.Runs) != 2 || list.Runs[0].Name != "nightly-2" || list.Runs[1].Progress != c || list.Runs[1].Size != 3 || list.Runs[0].PassRate != 0.5 {
		t.Fatalf("list %+v", list)
	}
	if list := decodeAs[RunList](t, do(t, "GET", b.url+"/runs?limit=1", ""), 200); len(list.Runs) != 1 {
		t.Fatalf("list?limit=1: %+v", list)
	}

	// A run's eval by its ID, the slash escaped.
	e := decodeAs[Eval](t, do(t, "GET", b.url+"/evals/"+url.PathEscape("nightly/add"), ""), 200)
	var res tasks.EvalResult
	if e.EvalID != "nightly/add" || e.State != "completed" || json.Unmarshal(e.Result, &res) != nil || res.Status != executor.StatusPassed {
		t.Fatalf("eval nightly/add: %+v", e)
	}
	// A run that ended: follow answers its lines and ends at once.
	if a := do(t, "GET", b.url+"/runs/nightly/results?follow=1", ""); a.code != 200 || bytes.Count(a.body, []byte("\n")) != 3 {
		t.Fatalf("follow of an ended run: %s", a)
	}
	// Cancelling it cancels nothing.
	if got := decodeAs[Cancelled](t, do(t, "POST", b.url+"/runs/nightly/cancel", ""), 200); got != (Cancelled{}) {
		t.Fatalf("cancel of an ended run: %+v", got)
	}
}

// A single eval: enqueued once whatever is sent again, run by a worker,
// read back with its result.
func TestEvalIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	const body = `{"eval_id":"e-1","spec":{"grade":"passed"},"timeout_s":20,"max_retry":0}`
	if got := decodeAs[EvalCreated](t, do(t, "POST", b.url+"/evals", body), 201); got.EvalID != "e-1" {
		t.Fatalf("created %+v", got)
	}
	for i := range 3 {
		a := do(t, "POST", b.url+"/evals", body)
		if e := decodeAs[Eval](t, a, 200); e.EvalID != "e-1" || e.State != "pending" {
			t.Fatalf("again (%d): %+v", i, e)
		}
		if loc := a.header.Get("Location"); loc != Prefix+"/evals/e-1" {
			t.Fatalf("Location %q", loc)
		}
	}
	// max_retry 0 is none: Asynq's retries are only the no-executor reserve.
	if info, err := b.insp.GetTaskInfo(tasks.Queues("apitest").Evals, "e-1"); err != nil || info.MaxRetry != tasks.NoExecutorReserve {
		t.Fatalf("e-1 with max_retry 0: %+v, %v; want Asynq's max retry %d", info, err, tasks.NoExecutorReserve)
	}
	// Even with another body: the ID decides.
	decodeAs[Eval](t, do(t, "POST", b.url+"/evals", `{"eval_id":"e-1","spec":{"grade":"failed"}}`), 200)
	q, err := b.insp.GetQueueInfo(tasks.Queues("apitest").Evals)
	if err != nil || q.Size != 1 {
		t.Fatalf("evals queue: %+v, %v; want one task", q, err)
	}
	// No ID: a new one each time.
	a := decodeAs[EvalCreated](t, do(t, "POST", b.url+"/evals", `{"spec":1}`), 201)
	b2 := decodeAs[EvalCreated](t, do(t, "POST", b.url+"/evals", `{"spec":1}`), 201)
	if a.EvalID == "" || a.EvalID == b2.EvalID {
		t.Fatalf("IDs %q and %q", a.EvalID, b2.EvalID)
	}

	startWorker(t, b, 2)
	var e Eval
	evaltest.Eventually(t, 30*time.Second, "eval e-1 never completed", func() bool {
		e = decodeAs[Eval](t, do(t, "GET", b.url+"/evals/e-1", ""), 200)
		return e.State == "completed"
	})
	var res tasks.EvalResult
	if err := json.Unmarshal(e.Result, &res); err != nil || res.Status != executor.StatusPassed || res.EvalID != "e-1" || e.Retried != 0 {
		t.Fatalf("eval %+v: %v", e, err)
	}
	// Submitted again once completed: answered as it is, never run again.
	if e := decodeAs[Eval](t, do(t, "POST", b.url+"/evals", body), 200); e.State != "completed" {
		t.Fatalf("again after completion: %+v", e)
	}
	evaltest.Eventually(t, 30*time.Second, "the other evals never completed", func() bool {
		q, err := b.insp.GetQueueInfo(tasks.Queues("apitest").Evals)
		return err == nil && q.Completed == 3
	})
	if st := b.executors[0].Stats(); st.Passed+st.Failed != 3 {
		t.Fatalf("the executor ran %d evals, want 3", st.Passed+st.Failed)
	}
}

// Cancels: of a run with one eval running (a real worker, one slot) and
// the rest pending, and of single evals.
func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"name":"long","evals":[
		{"spec":{"sleep_ms":60000}},{"spec":{"sleep_ms":60000}},{"spec":{"sleep_ms":60000}}]}`), 201)
	startWorker(t, b, 1)
	evaltest.Eventually(t, 30*time.Second, "no eval of the run started", func() bool {
		return decodeAs[run.Counts](t, do(t, "GET", b.url+"/runs/long/progress", ""), 200).Running == 1
	})
	got := decodeAs[Cancelled](t, do(t, "POST", b.url+"/runs/long/cancel", "{}"), 200)
	if got != (Cancelled{Pending: 2, Running: 1}) {
		t.Fatalf("run cancel: %+v", got)
	}
	c := decodeAs[run.Counts](t, do(t, "GET", b.url+"/runs/long/progress", ""), 200)
	if c != (run.Counts{Size: 3, Cancelled: 3}) {
		t.Fatalf("progress after cancel: %+v", c)
	}
	a := do(t, "GET", b.url+"/runs/long/results?follow=true", "")
	n := 0
	readLines(t, bytes.NewReader(a.body), func(l ResultLine) {
		if n++; l.Status != run.Cancelled {
			t.Errorf("after cancel: %+v", l)
		}
	})
	if n != 3 {
		t.Fatalf("%d lines after cancel", n)
	}
	// The executor is back once the running eval stopped.
	evaltest.Eventually(t, 30*time.Second, "the executor of the cancelled eval never came back", func() bool {
		st, err := b.pool.Status(t.Context())
		return err == nil && st.Counts[pool.StateAvailable] == 1
	})

	// A single pending eval (the worker's slot is free again, so it is
	// given a long one first).
	decodeAs[EvalCreated](t, do(t, "POST", b.url+"/evals", `{"eval_id":"busy","spec":{"sleep_ms":60000}}`), 201)
	evaltest.Eventually(t, 30*time.Second, "eval busy never started", func() bool {
		return decodeAs[Eval](t, do(t, "GET", b.url+"/evals/busy", ""), 200).State == "active"
	})
	decodeAs[EvalCreated](t, do(t, "POST", b.url+"/evals", `{"eval_id":"waits","spec":{}}`), 201)
	for _, tc := range []struct {
		id   string
		want Cancelled
	}{
		{"waits", Cancelled{Pending: 1}},
		{"busy", Cancelled{Running: 1}},
	} {
		if got := decodeAs[Cancelled](t, do(t, "POST", b.url+"/evals/"+tc.id+"/cancel", ""), 200); got != tc.want {
			t.Fatalf("cancel %s: %+v, want %+v", tc.id, got, tc.want)
		}
	}
	if a := do(t, "GET", b.url+"/evals/waits", ""); a.code != 404 {
		t.Fatalf("a cancelled pending eval is deleted: %s", a)
	}
}

// max_retry counts retries as a user does (0 is none); EvalOptions's 0 is
// the default, and its none is negative.
func TestRetryOptions(t *testing.T) {
	t.Parallel()
	n := func(v int) *int { return &v }
	for _, tc := range []struct {
		name     string
		maxRetry *int
		want     tasks.EvalOptions
	}{
		{"none given", nil, tasks.EvalOptions{}},
		{"0", n(0), tasks.EvalOptions{MaxRetry: -1}},
		{"2", n(2), tasks.EvalOptions{MaxRetry: 2}},
		{"the most", n(MaxRetry), tasks.EvalOptions{MaxRetry: MaxRetry}},
	} {
		if got, err := retryOptions(tc.maxRetry); err != nil || got != tc.want {
			t.Errorf("max_retry %s: %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	for _, bad := range []int{-1, MaxRetry + 1} {
		if _, err := retryOptions(n(bad)); !errors.Is(err, tasks.ErrBadPayload) {
			t.Errorf("max_retry %d: %v, want ErrBadPayload", bad, err)
		}
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{MaxBodyBytes: 4096}, nil, map[string]string{"gpu": "a100"})
	decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"name":"taken","evals":[{"spec":{}}]}`), 201)
	big := `{"evals":[{"spec":"` + strings.Repeat("x", 5000) + `"}]}`
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"malformed JSON", "POST", "/runs", `{"evals":[`, 400, "malformed"},
		{"not an object", "POST", "/runs", `[1]`, 400, "malformed"},
		{"empty body", "POST", "/runs", ``, 400, "empty"},
		{"null body", "POST", "/runs", `null`, 400, "evals"},
		{"unknown field", "POST", "/runs", `{"evals":[{"spec":1}],"urgency":9}`, 400, "unknown field"},
		{"negative weight", "POST", "/runs", `{"evals":[{"spec":1}],"weight":-1}`, 400, "weight -1"},
		{"weight 0", "POST", "/runs", `{"evals":[{"spec":1}],"weight":0}`, 400, "weight 0"},
		{"empty priority", "POST", "/runs", `{"evals":[{"spec":1}],"priority":""}`, 400, "priority \"\""},
		{"cap past the bound", "POST", "/runs", `{"evals":[{"spec":1}],"max_executors":9223372036854775807}`, 400, "max executors"},
		{"weight past the bound", "POST", "/runs", `{"evals":[{"spec":1}],"weight":1001}`, 400, "weight 1001"},
		{"negative cap", "POST", "/runs", `{"evals":[{"spec":1}],"max_executors":-2}`, 400, "max executors -2"},
		{"unknown priority", "POST", "/runs", `{"evals":[{"spec":1}],"priority":"urgent"}`, 400, "priority \"urgent\""},
		{"unknown eval field", "POST", "/runs", `{"evals":[{"spec":1,"lease_ttl_ms":5}]}`, 400, "unknown field"},
		{"trailing data", "POST", "/runs", `{"evals":[{"spec":1}]} {}`, 400, "malformed"},
		{"wrong type", "POST", "/runs", `{"evals":[{"spec":1}],"timeout_s":"10s"}`, 400, "malformed"},
		{"huge number", "POST", "/runs", `{"evals":[{"spec":1}],"max_retry":1e400}`, 400, "malformed"},
		{"no evals", "POST", "/runs", `{"name":"x","evals":[]}`, 400, "evals"},
		{"null eval", "POST", "/runs", `{"evals":[null]}`, 400, "spec"},
		{"missing spec", "POST", "/runs", `{"evals":[{"eval_id":"a"}]}`, 400, "spec"},
		{"null spec", "POST", "/runs", `{"evals":[{"spec":null}]}`, 400, "spec"},
		{"bad name", "POST", "/runs", `{"name":"a/b","evals":[{"spec":1}]}`, 400, "name"},
		{"zero timeout", "POST", "/runs", `{"timeout_s":0,"evals":[{"spec":1}]}`, 400, "timeout_s"},
		{"huge timeout", "POST", "/runs", `{"timeout_s":99999999999,"evals":[{"spec":1}]}`, 400, "timeout_s"},
		{"negative retries", "POST", "/runs", `{"max_retry":-1,"evals":[{"spec":1}]}`, 400, "max_retry"},
		{"duplicate key", "POST", "/runs", `{"evals":[{"eval_id":"k","spec":1},{"eval_id":"k","spec":2}]}`, 400, "key"},
		{"bad labels", "POST", "/runs", `{"require":{"gpu":"a 100"},"evals":[{"spec":1}]}`, 400, "a 100"},
		{"bad label type", "POST", "/runs", `{"evals":[{"spec":1,"require":{"gpu":1}}]}`, 400, "malformed"},
		{"unservable run", "POST", "/runs", `{"evals":[{"spec":1},{"spec":1,"require":{"gpu":"h100"}}]}`, 422, "gpu=h100"},
		{"name in use", "POST", "/runs", `{"name":"taken","evals":[{"spec":1}]}`, 409, "taken"},
		{"oversize run", "POST", "/runs", big, 413, "too large"},
		{"oversize eval", "POST", "/evals", big, 413, "too large"},
		{"eval malformed", "POST", "/evals", `{"spec":`, 400, "malformed"},
		{"eval unknown field", "POST", "/evals", `{"spec":1,"run":"x"}`, 400, "unknown field"},
		{"eval no spec", "POST", "/evals", `{"eval_id":"x"}`, 400, "spec"},
		{"eval bad ID", "POST", "/evals", `{"eval_id":"a b","spec":1}`, 400, "spaces"},
		{"eval long ID", "POST", "/evals", `{"eval_id":"` + strings.Repeat("a", 201) + `","spec":1}`, 400, "more than"},
		{"eval unservable", "POST", "/evals", `{"spec":1,"require":{"gpu":"h100"}}`, 422, "gpu=h100"},
		{"eval retries", "POST", "/evals", `{"spec":1,"max_retry":101}`, 400, "max_retry"},
		{"cancel body", "POST", "/runs/taken/cancel", `{"force":true}`, 400, "unknown field"},
		{"list limit zero", "GET", "/runs?limit=0", ``, 400, "limit"},
		{"list limit text", "GET", "/runs?limit=ten", ``, 400, "limit"},
		{"follow value", "GET", "/runs/taken/results?follow=maybe", ``, 400, "follow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := do(t, tc.method, b.url+tc.path, tc.body)
			if a.code != tc.code || !strings.Contains(a.errMsg(), tc.msg) || strings.Contains(a.errMsg(), "\n") {
				t.Fatalf("%s: %s; want %d with an error saying %q", tc.name, a, tc.code, tc.msg)
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
		})
	}
	// Nothing of the refused runs and evals was recorded or enqueued.
	list := decodeAs[RunList](t, do(t, "GET", b.url+"/runs", ""), 200)
	q, err := b.insp.GetQueueInfo(tasks.Queues("apitest").Evals)
	if len(list.Runs) != 1 || err != nil || q.Size != 1 {
		t.Fatalf("after refusals: %d runs, queue %+v, %v", len(list.Runs), q, err)
	}
}

func TestNotFoundAndMethods(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"name":"r1","evals":[{"spec":{}}]}`), 201)
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"GET", "/runs/nope", 404, ""},
		{"GET", "/runs/nope/progress", 404, ""},
		{"GET", "/runs/nope/results", 404, ""},
		{"GET", "/runs/nope/results?follow=1", 404, ""},
		{"GET", "/runs/nope/evals", 404, ""},
		{"POST", "/runs/nope/cancel", 404, ""},
		{"GET", "/runs/r1?compare=nope", 404, ""},
		{"GET", "/runs/r1?compare=" + url.QueryEscape("not a name"), 404, ""},
		{"GET", "/runs/" + url.PathEscape("bad name!"), 404, ""},
		{"GET", "/evals/nope", 404, ""},
		{"GET", "/evals/" + url.PathEscape("r1/nope"), 404, ""},
		{"POST", "/evals/nope/cancel", 404, ""},
		{"GET", "/nothing", 404, ""},
		{"GET", "/runs/r1/nothing", 404, ""},
		{"DELETE", "/runs", 405, "POST, GET, HEAD"},
		{"PUT", "/runs/r1", 405, "GET, HEAD"},
		{"POST", "/runs/r1/progress", 405, "GET, HEAD"},
		{"POST", "/runs/r1/evals", 405, "GET, HEAD"},
		{"GET", "/runs/r1/cancel", 405, "POST"},
		{"GET", "/evals", 405, "POST"},
		{"DELETE", "/evals/x", 405, "GET, HEAD"},
		{"PATCH", "/evals/x/cancel", 405, "POST"},
		{"POST", "/openapi.json", 405, "GET, HEAD"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			a := do(t, tc.method, b.url+tc.path, "")
			if a.code != tc.code || a.errMsg() == "" || a.header.Get("Allow") != tc.allow {
				t.Fatalf("%s; Allow %q; want %d, Allow %q and an error", a, a.header.Get("Allow"), tc.code, tc.allow)
			}
		})
	}
	// HEAD of results, followed or not, answers the GET's headers.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	head, _ := http.NewRequestWithContext(ctx, "HEAD", b.url+"/runs/r1/results?follow=1", nil)
	resp, err := http.DefaultClient.Do(head)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("HEAD results?follow=1: %v, %v", resp, err)
	}
	_ = resp.Body.Close()
	// A 404 for a run or eval leaves nothing behind: no cancel mark.
	if cancelled, err := b.pool.Cancelled(t.Context(), "nope"); err != nil || cancelled {
		t.Fatalf("cancel of an unknown eval marked it: %v, %v", cancelled, err)
	}
}

// Bodies that could trip a handler: each is refused with a 4xx or taken,
// never a 500 (a panic the handler recovered) nor a hang.
func TestNoPanicOnBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	bodies := []string{
		`null`, `true`, `"x"`, `0`, `[]`, `{}`, `{"evals":null}`, `{"evals":{}}`, `{"evals":[[]]}`,
		`{"evals":[{"spec":{}}],"require":null}`, `{"evals":[{"spec":{}}],"require":{"":""}}`,
		`{"evals":[{"spec":{}}],"require":{"a":"b","c":"d","e":"f","g":"h","i":"j"}}`,
		`{"spec":` + strings.Repeat("[", 100000) + `}`, "{\"spec\":\"\xff\xfe\"}", `{"eval_id":"\u0000","spec":1}`,
		`{"evals":[{"spec":1,"eval_id":"` + strings.Repeat("k", 300) + `"}]}`, `{"name":"` + strings.Repeat("n", 101) + `","evals":[{"spec":1}]}`,
		`{"timeout_s":-9223372036854775808,"evals":[{"spec":1}]}`, `{"max_retry":9223372036854775807,"evals":[{"spec":1}]}`,
	}
	for _, path := range []string{"/runs", "/evals", "/runs/x/cancel", "/evals/x/cancel"} {
		for i, body := range bodies {
			a := do(t, "POST", b.url+path, body)
			if a.code >= 500 || a.code < 400 && a.code != http.StatusCreated {
				t.Errorf("POST %s body %d (%.40q): %s", path, i, body, a)
			}
		}
	}
}

// Redis gone: every endpoint that reads it says 503, in JSON.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"name":"r1","evals":[{"spec":{}}]}`), 201)
	_ = b.client.Close()
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/runs", `{"evals":[{"spec":1}]}`},
		{"GET", "/runs", ""},
		{"GET", "/runs/r1", ""},
		{"GET", "/runs/r1/progress", ""},
		{"GET", "/runs/r1/results", ""},
		{"GET", "/runs/r1/evals", ""},
		{"POST", "/runs/r1/cancel", ""},
		{"POST", "/evals", `{"eval_id":"e","spec":1}`},
		{"POST", "/evals", `{"spec":1}`},
		{"GET", "/evals/e", ""},
		{"POST", "/evals/e/cancel", ""},
	} {
		if a := do(t, tc.method, b.url+tc.path, tc.body); a.code != http.StatusServiceUnavailable || a.errMsg() == "" {
			t.Errorf("%s %s without Redis: %s, want 503", tc.method, tc.path, a)
		}
	}
	if a := do(t, "GET", b.url+"/openapi.json", ""); a.code != 200 {
		t.Errorf("openapi.json without Redis: %s", a)
	}
}

// openAPIRoutes lists "METHOD path" for every operation of openapi.json.
func openAPIRoutes(t *testing.T) []string {
	t.Helper()
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.0.") {
		t.Fatalf("openapi.json: version %q, %v", doc.OpenAPI, err)
	}
	var routes []string
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
				routes = append(routes, strings.ToUpper(method)+" "+path)
			}
		}
	}
	slices.Sort(routes)
	return routes
}

// Every route the mux serves is in openapi.json, and every operation of
// openapi.json is a route the mux serves (asked of the mux itself).
func TestOpenAPICoversRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	documented := openAPIRoutes(t)
	var served []string
	for _, rt := range b.handler.routes() {
		served = append(served, rt.method+" "+rt.path)
	}
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("openapi.json documents\n  %v\nthe mux serves\n  %v", documented, served)
	}
	for _, op := range documented {
		method, path, _ := strings.Cut(op, " ")
		concrete := strings.NewReplacer("{name}", "r1", "{id}", "e1").Replace(path)
		req := httptest.NewRequest(method, concrete, nil)
		if _, pattern := b.handler.mux.Handler(req); pattern != op {
			t.Errorf("%s %s reaches %q, not %q", method, concrete, pattern, op)
		}
	}
	a := do(t, "GET", b.url+"/openapi.json", "")
	if a.code != 200 || a.header.Get("Content-Type") != "application/json" || !bytes.Equal(a.body, openAPIDoc) {
		t.Fatalf("GET openapi.json: %d %s", a.code, a.header.Get("Content-Type"))
	}
}

// Runs submitted without a name in the same second get names of their own.
func TestDefaultRunName(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	pattern := regexp.MustCompile(`^run-\d{8}-\d{6}-[0-9a-f]{6}$`)
	names := map[string]bool{}
	for range 3 {
		c := decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"evals":[{"spec":{}}]}`), 201)
		if !pattern.MatchString(c.Name) || names[c.Name] {
			t.Fatalf("default name %q (had %v)", c.Name, names)
		}
		names[c.Name] = true
	}
}

// A run's retention_s is the run's own retention; out of bounds it is a
// 400 and no run is made.
func TestRunRetention(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	runs := run.NewStore(b.client, run.Options{})
	for _, tc := range []struct {
		name, field string
		code        int
		want        time.Duration
	}{
		{"kept", `"retention_s":60,`, http.StatusCreated, time.Minute},
		{"default", ``, http.StatusCreated, run.DefaultRetention},
		{"zero", `"retention_s":0,`, http.StatusBadRequest, 0},
		{"over a year", `"retention_s":31536001,`, http.StatusBadRequest, 0},
	} {
		name := "retention-" + strings.ReplaceAll(tc.name, " ", "-")
		a := do(t, "POST", b.url+"/runs", fmt.Sprintf(`{"name":%q,%s"evals":[{"spec":{}}]}`, name, tc.field))
		if a.code != tc.code {
			t.Fatalf("%s: %s, want %d", tc.name, a, tc.code)
		}
		r, err := runs.Get(t.Context(), name)
		switch {
		case tc.code != http.StatusCreated:
			if !errors.Is(err, run.ErrNotFound) {
				t.Fatalf("%s: refused, yet the run reads %+v, %v", tc.name, r, err)
			}
		case err != nil || r.Retention != tc.want:
			t.Fatalf("%s: retention %s, %v; want %s", tc.name, r.Retention, err, tc.want)
		}
	}
}

// GET /evals/{id} reads the API's pool, or the one ?pool names: an eval of
// another pool is found there only.
func TestGetEvalOfPool(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	c, err := evalpool.NewClient(b.client, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []tasks.Eval{{ID: "here", Spec: json.RawMessage(`{}`)}, {ID: "there", Spec: json.RawMessage(`{}`)}} {
		p := b.pool.Name()
		if e.ID == "there" {
			p = "other"
		}
		if _, err := c.Enqueue(t.Context(), p, []tasks.Eval{e}, evalpool.EnqueueOptions{AllowEmptyPool: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		path, pool string // pool: the eval's, "" for 404
	}{
		{"/evals/here", "apitest"},
		{"/evals/here?pool=", "apitest"},
		{"/evals/here?pool=apitest", "apitest"},
		{"/evals/here?pool=other", ""},
		{"/evals/there", ""},
		{"/evals/there?pool=other", "other"},
		{"/evals/there?pool=nope", ""},
	} {
		a := do(t, "GET", b.url+tc.path, "")
		if tc.pool == "" {
			if a.code != 404 || a.errMsg() == "" {
				t.Errorf("GET %s: %s, want 404", tc.path, a)
			}
			continue
		}
		if e := decodeAs[Eval](t, a, 200); e.Pool != tc.pool || e.State != "pending" {
			t.Errorf("GET %s: %s, want a pending eval of pool %s", tc.path, a, tc.pool)
		}
	}
}
