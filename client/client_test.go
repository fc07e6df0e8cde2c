package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

type bundle struct {
	rdb  *redis.Client
	pool *pool.Pool
	runs *run.Store
	aq   *asynq.Client
	insp *asynq.Inspector
	// release ends, passed, the attempts the stand-in holds (spec.Hold).
	release chan struct{}
}

// setup gives a test a Redis of its own (Asynq's queues and the run index
// are per Redis) and a pool on it with one executor registered, where
// nothing answers: a submission to a pool with none is refused.
func setup(t *testing.T) *bundle {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	p, err := pool.New(rdb, pool.Options{Name: "clienttest"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Register(t.Context(), pool.Executor{URL: "http://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	return &bundle{
		rdb: rdb, pool: p, runs: run.NewStore(rdb, run.Options{}),
		aq: asynq.NewClientFromRedisClient(rdb), insp: asynq.NewInspectorFromRedisClient(rdb),
		release: make(chan struct{}),
	}
}

// spec is what the stand-in worker of serve understands.
type spec struct {
	// Grade is passed or failed, the result it writes; anything else
	// fails the attempt for good, and the eval is archived.
	Grade string `json:"grade"`
	// Block holds the attempt until it is cancelled.
	Block bool `json:"block"`
	// Hold holds the attempt until the test closes bundle.release.
	Hold bool `json:"hold"`
}

// serve runs a bare Asynq server of one slot on the pool's evals queue until
// the test ends. It stands in for a worker: client must not need package
// worker, not even in its tests.
func serve(t *testing.T, b *bundle) {
	t.Helper()
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Concurrency:              1,
		Queues:                   map[string]int{tasks.Queues(b.pool.Name()).Evals: 1},
		TaskCheckInterval:        10 * time.Millisecond,
		DelayedTaskCheckInterval: 10 * time.Millisecond,
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return time.Hour },
		LogLevel:                 asynq.FatalLevel,
	})
	err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		e, err := tasks.ParseEval(task.Payload())
		if err != nil {
			return err
		}
		var s spec
		if err := json.Unmarshal(e.Spec, &s); err != nil {
			return err
		}
		if s.Block {
			<-ctx.Done()
			return ctx.Err()
		}
		if s.Hold {
			select {
			case <-b.release:
				s.Grade = executor.StatusPassed
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if s.Grade != executor.StatusPassed && s.Grade != executor.StatusFailed {
			return fmt.Errorf("grade %q: %w", s.Grade, asynq.SkipRetry)
		}
		res, err := json.Marshal(tasks.EvalResult{EvalID: e.ID, Executor: "stand-in", Status: s.Grade})
		if err != nil {
			return err
		}
		_, err = task.ResultWriter().Write(res)
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}

// enqueue enqueues an eval of no run.
func enqueue(t *testing.T, b *bundle, id, spec string) {
	t.Helper()
	task, err := tasks.NewEval(tasks.Eval{ID: id, Pool: b.pool.Name(), Spec: json.RawMessage(spec)}, tasks.EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.aq.EnqueueContext(t.Context(), task); err != nil {
		t.Fatal(err)
	}
}

// state is the eval's state in Asynq, or "" if it is not found.
func state(t *testing.T, b *bundle, id string) asynq.TaskState {
	t.Helper()
	info, err := client.Lookup(b.insp, b.pool.Name(), id)
	if errors.Is(err, client.ErrEvalNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

func TestLookup(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Before the queue exists, and in it, an unknown eval is not found.
	if _, err := client.Lookup(b.insp, b.pool.Name(), "e-1"); !errors.Is(err, client.ErrEvalNotFound) {
		t.Fatalf("no queue: %v, want ErrEvalNotFound", err)
	}
	enqueue(t, b, "e-1", `{"grade":"passed"}`)
	if _, err := client.Lookup(b.insp, b.pool.Name(), "nope"); !errors.Is(err, client.ErrEvalNotFound) {
		t.Fatalf("unknown eval: %v, want ErrEvalNotFound", err)
	}
	info, err := client.Lookup(b.insp, b.pool.Name(), "e-1")
	if err != nil || info.ID != "e-1" || info.State != asynq.TaskStatePending {
		t.Fatalf("e-1: %+v, %v", info, err)
	}
	// Another pool's queue is not looked in.
	if _, err := client.Lookup(b.insp, "other", "e-1"); !errors.Is(err, client.ErrEvalNotFound) {
		t.Fatalf("e-1 in another pool: %v, want ErrEvalNotFound", err)
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	b := setup(t)
	enqueue(t, b, "e-1", `{"grade":"passed"}`)
	enqueue(t, b, "e-2", `{"grade":"failed"}`)
	enqueue(t, b, "e-3", `{"grade":"broken"}`)
	serve(t, b)
	var got []client.Finished
	if err := client.Wait(t.Context(), b.insp, b.pool.Name(), []string{"e-1", "e-2", "e-3"}, 10*time.Millisecond, func(f client.Finished) {
		got = append(got, f)
	}, nil); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(x, y client.Finished) int { return strings.Compare(x.ID, y.ID) })
	want := []client.Finished{
		{ID: "e-1", Outcome: client.OutcomePassed, Result: tasks.EvalResult{EvalID: "e-1", Executor: "stand-in", Status: executor.StatusPassed}},
		{ID: "e-2", Outcome: client.OutcomeFailed, Result: tasks.EvalResult{EvalID: "e-2", Executor: "stand-in", Status: executor.StatusFailed}},
		{ID: "e-3", Outcome: client.OutcomeErrored, Err: `grade "broken": skip retry for the task`},
	}
	if len(got) != len(want) {
		t.Fatalf("finished %+v, want %+v", got, want)
	}
	for i := range want {
		if g, w := got[i], want[i]; g.ID != w.ID || g.Outcome != w.Outcome || g.Retried != 0 || g.Err != w.Err ||
			g.Result.EvalID != w.Result.EvalID || g.Result.Executor != w.Result.Executor || g.Result.Status != w.Result.Status {
			t.Errorf("finished %+v, want %+v", g, w)
		}
	}
}

// Wait gives up when its context ends, saying how many are left, and at
// once for an eval that does not exist.
func TestWaitEnds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	enqueue(t, b, "e-1", `{"grade":"passed"}`)
	enqueue(t, b, "e-2", `{"grade":"passed"}`)
	ctx, cancel := context.WithTimeoutCause(t.Context(), 50*time.Millisecond, errors.New("given up"))
	defer cancel()
	err := client.Wait(ctx, b.insp, b.pool.Name(), []string{"e-1", "e-2"}, 10*time.Millisecond, func(f client.Finished) {
		t.Errorf("finished %+v with no worker", f)
	}, nil)
	if err == nil || err.Error() != "given up (2 of 2 evals still running)" {
		t.Fatalf("Wait: %v", err)
	}
	err = client.Wait(t.Context(), b.insp, b.pool.Name(), []string{"e-1", "nope"}, 10*time.Millisecond, func(client.Finished) {}, nil)
	if !errors.Is(err, client.ErrEvalNotFound) {
		t.Fatalf("Wait for an unknown eval: %v, want ErrEvalNotFound", err)
	}
}

// A producer that holds the evals it waits for enqueues one that vanished
// (Redis's data went back) again, and Wait waits for it as for the others.
func TestWaitRequeuesAVanishedEval(t *testing.T) {
	t.Parallel()
	b := setup(t)
	enqueue(t, b, "e-1", `{"grade":"passed"}`)
	serve(t, b)
	var requeued []string
	var got []string
	err := client.Wait(t.Context(), b.insp, b.pool.Name(), []string{"e-1", "gone"}, 10*time.Millisecond, func(f client.Finished) {
		got = append(got, f.ID+" "+f.Outcome)
	}, func(_ context.Context, id string) error {
		requeued = append(requeued, id)
		enqueue(t, b, id, `{"grade":"passed"}`)
		return nil
	})
	slices.Sort(got)
	if err != nil || !slices.Equal(requeued, []string{"gone"}) || !slices.Equal(got, []string{"e-1 passed", "gone passed"}) {
		t.Fatalf("Wait = %v; requeued %v, finished %v", err, requeued, got)
	}
}

func TestSubmit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Register(t.Context(), pool.Executor{URL: "http://127.0.0.1:1", Labels: map[string]string{"gpu": "a100", "zone": "a"}}); err != nil {
		t.Fatal(err)
	}
	req := client.RunRequest{
		Name: "nightly",
		Evals: []tasks.Eval{
			{ID: "add", Spec: json.RawMessage(`{"grade":"passed"}`)},
			{Spec: json.RawMessage(`{"grade":"failed"}`), Require: map[string]string{"zone": "a"}},
		},
		Require: map[string]string{"gpu": "a100"},
		Timeout: 90 * time.Second,
	}
	r, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, req)
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "nightly" || r.Pool != b.pool.Name() || r.Size != 2 || !slices.Equal(r.Keys, []string{"add", "2"}) {
		t.Fatalf("submitted %+v", r)
	}
	if got, err := b.runs.Get(t.Context(), "nightly"); err != nil || !slices.Equal(got.Keys, r.Keys) || got.Require["gpu"] != "a100" {
		t.Fatalf("recorded %+v, %v", got, err)
	}
	for key, require := range map[string]map[string]string{"add": {"gpu": "a100"}, "2": {"gpu": "a100", "zone": "a"}} {
		info, err := client.Lookup(b.insp, b.pool.Name(), run.EvalID("nightly", key))
		if err != nil {
			t.Fatal(err)
		}
		e, err := tasks.ParseEval(info.Payload)
		if err != nil || e.Run != "nightly" || e.Key != key || e.Timeout() != 90*time.Second || len(e.Require) != len(require) {
			t.Fatalf("eval %s: %+v, %v", key, e, err)
		}
		for k, v := range require {
			if e.Require[k] != v {
				t.Fatalf("eval %s requires %v, want %v", key, e.Require, require)
			}
		}
		if info.MaxRetry != tasks.DefaultMaxRetry+tasks.NoExecutorReserve {
			t.Fatalf("eval %s: max retry %d", key, info.MaxRetry)
		}
	}
	// The caller's evals are left as they were.
	if req.Evals[0].Run != "" || len(req.Evals[1].Require) != 1 {
		t.Fatalf("the request changed: %+v", req.Evals)
	}
	if _, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, req); !errors.Is(err, run.ErrExists) {
		t.Fatalf("a name in use: %v, want run.ErrExists", err)
	}

	// Without a name, one is made of the time.
	r, err = client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, client.RunRequest{Evals: req.Evals[:1]})
	if err != nil || !strings.HasPrefix(r.Name, "run-") || r.Size != 1 {
		t.Fatalf("unnamed: %+v, %v", r, err)
	}
}

// The run's options reach Asynq: MaxRetry 0 is the default, negative none,
// each plus NoExecutorReserve.
func TestSubmitRetries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tc := range []struct{ maxRetry, want int }{
		{0, tasks.DefaultMaxRetry},
		{-1, 0},
		{5, 5},
	} {
		name := fmt.Sprintf("retries%d", tc.maxRetry)
		if _, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, client.RunRequest{
			Name: name, Evals: []tasks.Eval{{Spec: json.RawMessage(`{}`)}}, Options: tasks.EvalOptions{MaxRetry: tc.maxRetry},
		}); err != nil {
			t.Fatal(err)
		}
		info, err := client.Lookup(b.insp, b.pool.Name(), run.EvalID(name, "1"))
		if err != nil || info.MaxRetry != tc.want+tasks.NoExecutorReserve {
			t.Errorf("MaxRetry %d: %+v, %v; want Asynq's max retry %d", tc.maxRetry, info, err, tc.want+tasks.NoExecutorReserve)
		}
	}
}

// Servable refuses a pool with no executor unless allowed, which takes any
// eval; in a pool with executors, an eval whose labels none has.
func TestServable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Register(t.Context(), pool.Executor{URL: "http://127.0.0.1:2", Labels: map[string]string{"gpu": "a100"}}); err != nil {
		t.Fatal(err)
	}
	empty, err := pool.New(b.rdb, pool.Options{Name: "empty"})
	if err != nil {
		t.Fatal(err)
	}
	plain := tasks.Eval{ID: "plain", Spec: json.RawMessage(`{}`)}
	a100 := tasks.Eval{ID: "a100", Spec: json.RawMessage(`{}`), Require: map[string]string{"gpu": "a100"}}
	h100 := tasks.Eval{ID: "h100", Spec: json.RawMessage(`{}`), Require: map[string]string{"gpu": "h100"}}
	for _, tc := range []struct {
		name       string
		pool       *pool.Pool
		evals      []tasks.Eval
		allowEmpty bool
		want       error
	}{
		{"empty pool", empty, []tasks.Eval{plain}, false, pool.ErrEmpty},
		{"empty pool, labels", empty, []tasks.Eval{a100}, false, pool.ErrEmpty},
		{"empty pool allowed", empty, []tasks.Eval{plain, h100}, true, nil},
		{"servable", b.pool, []tasks.Eval{plain, a100, a100}, false, nil},
		{"unservable", b.pool, []tasks.Eval{plain, a100, h100}, false, pool.ErrUnservable},
		{"unservable, empty allowed", b.pool, []tasks.Eval{h100}, true, pool.ErrUnservable},
	} {
		err := client.Servable(t.Context(), tc.pool, tc.evals, tc.allowEmpty)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// A run that cannot be submitted leaves nothing behind: no run, no task.
func TestSubmitRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	spec := json.RawMessage(`{}`)
	for _, tc := range []struct {
		name string
		req  client.RunRequest
		want error
	}{
		{"no evals", client.RunRequest{Name: "r"}, tasks.ErrBadPayload},
		{"bad name", client.RunRequest{Name: "a/b", Evals: []tasks.Eval{{Spec: spec}}}, run.ErrInvalid},
		{"bad labels", client.RunRequest{Name: "r", Evals: []tasks.Eval{{Spec: spec}}, Require: map[string]string{"": "x"}}, tasks.ErrBadPayload},
		{"duplicate key", client.RunRequest{Name: "r", Evals: []tasks.Eval{{ID: "2", Spec: spec}, {Spec: spec}}}, tasks.ErrBadPayload},
		{"bad eval", client.RunRequest{Name: "r", Evals: []tasks.Eval{{Spec: spec}, {}}}, tasks.ErrBadPayload},
		{"unservable", client.RunRequest{Name: "r", Evals: []tasks.Eval{{Spec: spec}, {Spec: spec, Require: map[string]string{"gpu": "h100"}}}}, pool.ErrUnservable},
	} {
		if _, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := b.runs.Get(t.Context(), "r"); !errors.Is(err, run.ErrNotFound) {
		t.Fatalf("run r: %v, want run.ErrNotFound", err)
	}
	if queues, err := b.insp.Queues(); err != nil || len(queues) != 0 {
		t.Fatalf("queues %v, %v; want none", queues, err)
	}
}

// Cancel of evals in each state: pending, running, ended and unknown.
func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	enqueue(t, b, "done", `{"grade":"passed"}`)
	serve(t, b)
	evaltest.Eventually(t, 10*time.Second, "eval done never completed", func() bool {
		return state(t, b, "done") == asynq.TaskStateCompleted
	})
	// One slot: the run's first eval holds it, the second waits.
	if _, err := client.Submit(t.Context(), b.aq, b.insp, b.pool, b.runs, client.RunRequest{Name: "r", Evals: []tasks.Eval{
		{ID: "runs", Spec: json.RawMessage(`{"block":true}`)},
		{ID: "waits", Spec: json.RawMessage(`{"grade":"passed"}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 10*time.Second, "eval r/runs never became active", func() bool {
		return state(t, b, "r/runs") == asynq.TaskStateActive
	})

	got, err := client.Cancel(t.Context(), b.insp, b.pool, b.runs, []string{"r/runs", "r/waits", "done", "nope"})
	if err != nil || got != (client.Cancelled{Pending: 1, Running: 1, Ended: 1, Unknown: 1}) {
		t.Fatalf("cancel: %+v, %v", got, err)
	}
	// The pending one is gone, the running one's attempt was cancelled, and
	// both are marked in the pool, so that no later delivery gets an
	// executor, and recorded in their run.
	if s := state(t, b, "r/waits"); s != 0 {
		t.Fatalf("the pending eval is %s, want deleted", s)
	}
	evaltest.Eventually(t, 10*time.Second, "the running eval's attempt was never cancelled", func() bool {
		return state(t, b, "r/runs") != asynq.TaskStateActive
	})
	for _, id := range []string{"r/runs", "r/waits"} {
		if c, err := b.pool.Cancelled(t.Context(), id); err != nil || !c {
			t.Fatalf("%s marked cancelled in the pool: %v, %v", id, c, err)
		}
	}
	if c, err := b.runs.Progress(t.Context(), "r"); err != nil || c != (run.Counts{Size: 2, Cancelled: 2}) {
		t.Fatalf("run r: %+v, %v", c, err)
	}
	if s := state(t, b, "done"); s != asynq.TaskStateCompleted {
		t.Fatalf("the ended eval is %s", s)
	}
}

// A negative poll interval is refused in one line, not a panic.
func TestWaitRefusesANegativeInterval(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := client.WaitWith(t.Context(), b.insp, b.pool.Name(), []string{"e"}, client.WaitOptions{Every: -1}); err == nil || !strings.Contains(err.Error(), "may not be negative") {
		t.Fatalf("WaitWith(Every: -1) = %v, want refused", err)
	}
}

// enqueueHeld enqueues an eval of no run held for admission, as
// evalpool.Client.Enqueue does.
func enqueueHeld(t *testing.T, b *bundle, id, spec string) {
	t.Helper()
	task, err := tasks.NewEval(tasks.Eval{ID: id, Pool: b.pool.Name(), Spec: json.RawMessage(spec)}, tasks.EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.aq.EnqueueContext(t.Context(), task, tasks.Hold(time.Now())); err != nil {
		t.Fatal(err)
	}
}

// Evals of no run wait held until admitted, oldest first, within their
// share (twice the pool's one executor); a cancel takes one out, held or
// in flight; Readmit releases one admitted but still held (its admitter
// died between the two), forgets one whose task is gone, and one whose
// task is orphaned.
func TestHeldEvals(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	for _, id := range []string{"h1", "h2", "h3"} {
		enqueueHeld(t, b, id, `{"grade":"passed"}`)
	}
	if d, err := client.Show(ctx, b.insp, b.runs, b.pool.Name(), "h1"); err != nil || d.State != client.StateQueued {
		t.Fatalf("a held eval shows as %q, %v; want %q", d.State, err, client.StateQueued)
	}
	if n, err := client.Admit(ctx, b.aq, b.insp, b.pool, b.runs); err != nil || n != 2 {
		t.Fatalf("Admit = %d, %v; want 2, twice the pool's one executor", n, err)
	}
	for id, want := range map[string]asynq.TaskState{"h1": asynq.TaskStatePending, "h2": asynq.TaskStatePending, "h3": asynq.TaskStateScheduled} {
		if got := state(t, b, id); got != want {
			t.Errorf("after admission %s is %s, want %s", id, got, want)
		}
	}
	inflight := func() []string {
		t.Helper()
		ids, err := b.runs.Standalone(ctx, b.pool.Name())
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		return ids
	}
	if got, err := client.Cancel(ctx, b.insp, b.pool, b.runs, []string{"h2", "h3"}); err != nil || got != (client.Cancelled{Pending: 2}) {
		t.Fatalf("cancel: %+v, %v", got, err)
	}
	if got := inflight(); !slices.Equal(got, []string{"h1"}) {
		t.Fatalf("in flight after the cancel: %v, want [h1]", got)
	}

	enqueueHeld(t, b, "h4", `{"hold":true}`)
	for _, id := range []string{"h4", "ghost"} {
		if err := b.rdb.ZAdd(ctx, keys.Standalone(b.pool.Name()), redis.Z{Member: id}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := client.Readmit(ctx, b.aq, b.insp, b.pool, b.runs); err != nil || n != 1 {
		t.Fatalf("Readmit = %d, %v; want the one admitted but held released", n, err)
	}
	if got := state(t, b, "h4"); got != asynq.TaskStatePending {
		t.Errorf("h4 is %s after Readmit, want pending", got)
	}
	if got := inflight(); !slices.Equal(got, []string{"h1", "h4"}) {
		t.Errorf("in flight after Readmit: %v, want [h1 h4]", got)
	}

	// h4 runs, and its worker dies: its task stays active, its Asynq lease
	// passes (set back here rather than waited for, 30 s), and nobody works
	// on it until Asynq's recoverer hands it out again. It is in flight no
	// more, so that admission goes on meanwhile.
	// A lease 5 s past by Redis's clock is a live worker's whose clock is
	// 5 s behind: h4 stays in flight, as Asynq's recoverer leaves it.
	serve(t, b)
	evaltest.Eventually(t, 10*time.Second, "h4 running", func() bool { return state(t, b, "h4") == asynq.TaskStateActive })
	setLease := func(ago time.Duration) {
		t.Helper()
		if err := b.rdb.ZAdd(ctx, tasks.LeaseKey(tasks.Queues(b.pool.Name()).Evals), redis.Z{Member: "h4", Score: float64(time.Now().Add(-ago).Unix())}).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Readmit(ctx, b.aq, b.insp, b.pool, b.runs); err != nil {
			t.Fatal(err)
		}
	}
	setLease(5 * time.Second)
	if got := inflight(); !slices.Contains(got, "h4") {
		t.Errorf("in flight after h4's lease passed by 5 s (its worker's clock behind): %v; want it still in", got)
	}
	setLease(time.Minute)
	close(b.release)
	if got := inflight(); slices.Contains(got, "h4") {
		t.Errorf("in flight after h4's lease passed: %v; want it out", got)
	}
}
