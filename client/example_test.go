package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// A run is a named suite of evals: submitted at once, run by the workers
// of its pool, and summed up once its evals have ended.
func ExampleSubmit() {
	ctx, stop := context.WithCancel(context.Background())
	rdb := evaltest.ExampleClient()
	p, err := pool.New(rdb, pool.Options{Name: "example-run"})
	if err != nil {
		panic(err)
	}
	defer rdb.Del(context.Background(), p.Keys()...)
	ex, err := refexec.New(refexec.Options{})
	if err != nil {
		panic(err)
	}
	executor := httptest.NewServer(ex)
	defer executor.Close()
	if _, err := p.Register(ctx, pool.Executor{URL: executor.URL}); err != nil {
		panic(err)
	}
	w, err := worker.New(worker.Config{Redis: rdb, Pools: []*pool.Pool{p}, PollInterval: 50 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()

	runs := run.NewStore(rdb, run.Options{})
	var evals []tasks.Eval
	for _, grade := range []string{"passed", "passed", "failed"} {
		evals = append(evals, tasks.Eval{Pool: p.Name(), Spec: json.RawMessage(`{"grade":"` + grade + `"}`)})
	}
	r, err := client.Submit(ctx, asynq.NewClientFromRedisClient(rdb), p, runs, client.RunRequest{Name: "example", Evals: evals})
	if err != nil {
		panic(err)
	}
	for {
		c, err := runs.Progress(ctx, r.Name)
		if err == nil && c.Done() == len(evals) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	sum, err := runs.Summarize(ctx, r.Name, "")
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: %d passed, %d failed, pass rate %.2f\n", sum.Name, sum.Passed, sum.Failed, sum.PassRate)
	stop()
	if err := <-ran; err != nil {
		panic(err)
	}
	// Output:
	// example: 2 passed, 1 failed, pass rate 0.67
}
