package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// A worker runs the evals queued for its pools: each on an executor it
// leases from the pool, which its cleanup returns when the eval ends. The
// eval's result is its Asynq task's.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	client := evaltest.ExampleClient()
	p, err := pool.New(client, pool.Options{Name: "example-worker"})
	if err != nil {
		panic(err)
	}
	defer client.Del(context.Background(), p.Keys()...)
	ex, err := refexec.New(refexec.Options{})
	if err != nil {
		panic(err)
	}
	executor := httptest.NewServer(ex)
	defer executor.Close()
	if _, err := p.Register(ctx, pool.Executor{URL: executor.URL}); err != nil {
		panic(err)
	}

	w, err := worker.New(worker.Config{Redis: client, Pools: []*pool.Pool{p}, PollInterval: 50 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()

	task, err := tasks.NewEval(tasks.Eval{ID: "eval-1", Pool: p.Name(), Spec: json.RawMessage(`{"grade":"passed"}`), TimeoutS: 60}, tasks.EvalOptions{})
	if err != nil {
		panic(err)
	}
	if _, err := asynq.NewClientFromRedisClient(client).Enqueue(task); err != nil {
		panic(err)
	}
	insp := asynq.NewInspectorFromRedisClient(client)
	for {
		info, err := insp.GetTaskInfo(tasks.Queues(p.Name()).Evals, "eval-1")
		if err == nil && info.State == asynq.TaskStateCompleted {
			var r tasks.EvalResult
			if err := json.Unmarshal(info.Result, &r); err != nil {
				panic(err)
			}
			fmt.Println(r.EvalID, r.Status, r.Executor == executor.URL)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if err := <-ran; err != nil {
		panic(err)
	}
	// Output:
	// eval-1 passed true
}
