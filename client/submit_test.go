package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// TestSubmissionCutShort submits runs of large evals to a real Redis with a
// small maxmemory: writing their specs hits the limit part way. The run
// says it is incomplete; once memory is freed a resume queues the rest,
// and each eval runs once however often it is repeated; a run cut short
// can be cancelled to its end instead.
func TestSubmissionCutShort(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{Args: evaltest.FullRedisArgs})
	rdb := srv.Client(t)
	p, err := pool.New(rdb, pool.Options{Name: "cut"})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{rdb: rdb, pool: p, runs: run.NewStore(rdb, run.Options{}), aq: asynq.NewClientFromRedisClient(rdb), insp: asynq.NewInspectorFromRedisClient(rdb)}
	t.Cleanup(func() { _ = b.aq.Close() })
	ctx := t.Context()
	spec, _ := json.Marshal(strings.Repeat("x", 256<<10))
	req := func(name string) client.RunRequest {
		evals := make([]tasks.Eval, 60)
		for i := range evals {
			evals[i] = tasks.Eval{ID: fmt.Sprint(i), Spec: spec}
		}
		// No executor: the evals are only enqueued.
		return client.RunRequest{Name: name, Evals: evals, AllowEmptyPool: true}
	}
	// Each eval of the run, once, by its spec: waiting in the run, or
	// admitted (then in Asynq).
	specs := func() int {
		n, err := rdb.HLen(ctx, keys.ForRun("resumed").Specs()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return int(n)
	}

	if _, err := client.Submit(ctx, b.aq, b.insp, p, b.runs, req("resumed")); !errors.Is(err, pool.ErrRedisFull) {
		t.Fatalf("submit: %v, want ErrRedisFull", err)
	}
	if n := specs(); n == 60 {
		t.Fatalf("submit cut short: %d evals kept, want fewer than 60", n)
	}
	got, err := b.runs.Get(ctx, "resumed")
	if err != nil || got.Submission != run.Incomplete {
		t.Fatalf("run after the cut: %+v, %v; want incomplete", got, err)
	}
	if _, err := client.Submit(ctx, b.aq, b.insp, p, b.runs, req("resumed")); !errors.Is(err, run.ErrExists) {
		t.Fatalf("submit again without resume: %v, want ErrExists", err)
	}

	// Free memory: the evals' specs smaller, to fit.
	if err := rdb.Del(ctx, keys.ForRun("resumed").Specs()).Err(); err != nil {
		t.Fatal(err)
	}
	small := req("resumed")
	for i := range small.Evals {
		small.Evals[i].Spec = json.RawMessage(`{}`)
	}
	small.Resume = true
	for range 2 {
		r, err := client.Submit(ctx, b.aq, b.insp, p, b.runs, small)
		if err != nil || r.Submission != run.Complete {
			t.Fatalf("resume: %+v, %v", r, err)
		}
		if n := specs(); n != 60 {
			t.Fatalf("after resume, %d evals kept; want each of the 60 once", n)
		}
	}
	if got, _ := b.runs.Get(ctx, "resumed"); got.Submission != run.Complete {
		t.Errorf("run after resume: %+v", got)
	}
	other := small
	other.Evals = other.Evals[:10]
	if _, err := client.Submit(ctx, b.aq, b.insp, p, b.runs, other); !errors.Is(err, run.ErrInvalid) {
		t.Errorf("resume with other evals: %v, want ErrInvalid", err)
	}
	relabelled := small
	relabelled.Meta = map[string]string{"model": "another"}
	if _, err := client.Submit(ctx, b.aq, b.insp, p, b.runs, relabelled); !errors.Is(err, run.ErrInvalid) || !strings.Contains(err.Error(), "resume needs the meta it was submitted with") {
		t.Errorf("resume with other meta: %v, want ErrInvalid saying so", err)
	}

	// Another run cut short, then cancelled: every eval ends.
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Submit(ctx, b.aq, b.insp, p, b.runs, req("cancelled")); !errors.Is(err, pool.ErrRedisFull) {
		t.Fatalf("second submit: %v, want ErrRedisFull", err)
	}
	// Cancelling marks the evals in the pool, a write: raise the limit.
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CancelRun(ctx, b.insp, p, b.runs, "cancelled"); err != nil {
		t.Fatal(err)
	}
	if c, err := b.runs.Progress(ctx, "cancelled"); err != nil || c.Cancelled != 60 || c.Pending != 0 {
		t.Errorf("after cancel: %+v, %v; want all 60 cancelled", c, err)
	}
}

// TestPlantedEvalIsRefused sends the attack of an eval claimed in advance:
// an eval enqueued under the ID RUN/1 before run RUN is submitted. A
// producer refuses such a plain eval; one put on the queue past it (any
// Asynq client, or a release before the rule) makes Submit refuse the run,
// naming the eval, with nothing of the run written; the run's own evals
// enqueued before a crash stay a resume's to enqueue past.
func TestPlantedEvalIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	queue := tasks.Queues(b.pool.Name()).Evals
	suite := func(name string, specs ...string) client.RunRequest {
		req := client.RunRequest{Name: name}
		for _, s := range specs {
			req.Evals = append(req.Evals, tasks.Eval{Spec: json.RawMessage(s)})
		}
		return req
	}

	// The producers' path: a plain eval under a run's ID is bad input.
	if _, err := tasks.NewEval(tasks.Eval{ID: "RUN/1", Pool: b.pool.Name(), Spec: json.RawMessage(`{"planted":true}`)}, tasks.EvalOptions{}); !errors.Is(err, tasks.ErrBadPayload) || !strings.Contains(err.Error(), `"RUN/1"`) {
		t.Errorf("plain eval RUN/1: %v, want ErrBadPayload naming it", err)
	}

	tests := []struct {
		name    string
		planted string // the payload under NAME/1, enqueued apart
		resume  bool
		want    error
	}{
		{"planted spec", `{"eval_id":"%s/1","spec":{"planted":true},"timeout_s":60}`, false, client.ErrEvalIDTaken},
		{"planted as the run's", `{"eval_id":"%[1]s/1","run":"%[1]s","key":"1","pool":"clienttest","spec":{"planted":true},"timeout_s":60}`, false, client.ErrEvalIDTaken},
		{"own eval, other timeout", `{"eval_id":"%[1]s/1","run":"%[1]s","key":"1","pool":"clienttest","spec":{"grade": "passed"},"timeout_s":5}`, false, nil},
		{"planted, resume", `{"eval_id":"%s/1","spec":{"planted":true},"timeout_s":60}`, true, client.ErrEvalIDTaken},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprint("RUN", i)
			if _, err := b.aq.EnqueueContext(ctx, asynq.NewTask(tasks.TypeEval, []byte(fmt.Sprintf(tt.planted, name)), asynq.Queue(queue), asynq.TaskID(name+"/1"))); err != nil {
				t.Fatal(err)
			}
			req := suite(name, `{"grade":"passed"}`, `{"grade":"failed"}`)
			req.Resume = tt.resume
			_, err := client.Submit(ctx, b.aq, b.insp, b.pool, b.runs, req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("submit: %v, want %v", err, tt.want)
			}
			info, lerr := client.Lookup(b.insp, b.pool.Name(), name+"/2")
			if tt.want != nil {
				if !strings.Contains(err.Error(), name+"/1") {
					t.Errorf("error %q names no eval", err)
				}
				if _, gerr := b.runs.Get(ctx, name); !errors.Is(gerr, run.ErrNotFound) || !errors.Is(lerr, client.ErrEvalNotFound) {
					t.Errorf("after the refusal: run %v, eval 2 %v; want neither written", gerr, lerr)
				}
				return
			}
			if lerr != nil || info.State != asynq.TaskStatePending {
				t.Fatalf("eval 2: %v, %v", info, lerr)
			}
			if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, b.runs, req); !errors.Is(err, run.ErrExists) || errors.Is(err, client.ErrEvalIDTaken) {
				t.Errorf("the same run again: %v, want ErrExists", err)
			}
			req.Resume = true
			if r, err := client.Submit(ctx, b.aq, b.insp, b.pool, b.runs, req); err != nil || r.Submission != run.Complete {
				t.Errorf("resume: %+v, %v", r, err)
			}
		})
	}
}

// trips counts a client's round trips: a command or a pipeline each.
type trips struct{ n atomic.Int64 }

func (h *trips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *trips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *trips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// TestCancelRunInBatches cancels a run of 5,000 pending evals: each is
// deleted from the queue and recorded cancelled, once, in a few round
// trips (a script per 1,000), where a round trip or more per eval, and a
// scan of the queue per delete, made 100,000 take minutes.
func TestCancelRunInBatches(t *testing.T) {
	t.Parallel()
	const n = 5000
	b := setup(t)
	ctx := t.Context()
	req := client.RunRequest{Name: "big"}
	for range n {
		req.Evals = append(req.Evals, tasks.Eval{Spec: json.RawMessage(`{"grade":"passed"}`)})
	}
	if _, err := client.Submit(ctx, b.aq, b.insp, b.pool, b.runs, req); err != nil {
		t.Fatal(err)
	}
	// A plain eval in the same queue stays.
	enqueue(t, b, "plain", `{"grade":"passed"}`)
	h := &trips{}
	b.rdb.AddHook(h)
	c, err := client.CancelRun(ctx, b.insp, b.pool, b.runs, "big")
	if err != nil || c.Pending != n || c.Running+c.Ended+c.Unknown != 0 {
		t.Fatalf("cancel: %+v, %v; want %d pending", c, err, n)
	}
	if got := h.n.Load(); got > n/100 {
		t.Errorf("cancel of %d pending evals took %d round trips, want at most %d", n, got, n/100)
	}
	info, err := b.insp.GetQueueInfo(tasks.Queues(b.pool.Name()).Evals)
	if err != nil || info.Pending != 1 || info.Size != 1 {
		t.Fatalf("queue after cancel: %+v, %v; want the plain eval only", info, err)
	}
	if p, err := b.runs.Progress(ctx, "big"); err != nil || p.Cancelled != n || p.Pending != 0 {
		t.Fatalf("run after cancel: %+v, %v", p, err)
	}
	if recs, _, err := b.runs.EndedSince(ctx, "big", 0, run.MaxEndedSince); err != nil || len(recs) != n || recs[0].Status != run.Cancelled {
		t.Fatalf("ends logged: %d, %v", len(recs), err)
	}
	if c, err := client.CancelRun(ctx, b.insp, b.pool, b.runs, "big"); err != nil || c != (client.Cancelled{}) {
		t.Fatalf("cancel again: %+v, %v; want nothing left to cancel", c, err)
	}
}
