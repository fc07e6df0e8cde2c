package evalpool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
	"github.com/evalpool/evalpool/worker"
)

// A worker runs the evals queued for its pools, each on an executor it
// leases from the pool and gives back when the eval ends. Here one worker
// serves one pool of one executor, until its context ends.
func ExampleNewWorker() {
	ctx, stop := context.WithCancel(context.Background())
	rdb := evaltest.ExampleClient()
	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		panic(err)
	}
	p, err := c.Pool("example-worker")
	if err != nil {
		panic(err)
	}
	defer rdb.Del(context.Background(), p.Keys()...)
	ex, err := refexec.New(refexec.Options{}) // an executor: anything that speaks package executor's protocol
	if err != nil {
		panic(err)
	}
	server := httptest.NewServer(ex)
	defer server.Close()
	if _, err := p.Register(ctx, pool.Executor{URL: server.URL}); err != nil {
		panic(err)
	}

	w, err := evalpool.NewWorker(rdb, evalpool.WorkerConfig{
		Pools:  []string{"example-worker"},
		Config: worker.Config{Concurrency: 4, PollInterval: 50 * time.Millisecond},
	})
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()

	if _, err := c.Enqueue(ctx, "example-worker", []tasks.Eval{{ID: "eval-1", Spec: json.RawMessage(`{"grade":"passed"}`)}}, evalpool.EnqueueOptions{}); err != nil {
		panic(err)
	}
	if err := c.Wait(ctx, "example-worker", []string{"eval-1"}, client.WaitOptions{Every: 20 * time.Millisecond}); err != nil {
		panic(err)
	}
	e, err := c.Eval(ctx, "example-worker", "eval-1")
	if err != nil {
		panic(err)
	}
	fmt.Println(e.EvalID, e.Outcome, e.Attempts[0].Executor == server.URL)
	stop()
	if err := <-ran; err != nil {
		panic(err)
	}
	// Output:
	// eval-1 passed true
}

// A client is what a producer holds: it enqueues evals in a pool, follows
// them to their end and reads their results. The workers that run them may
// be anywhere; exampleWorker starts one here, as ExampleNewWorker does.
func ExampleNewClient() {
	ctx := context.Background()
	rdb := evaltest.ExampleClient()
	defer exampleWorker(rdb, "example-client")()

	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		panic(err)
	}
	evals := []tasks.Eval{
		{ID: "add", Spec: json.RawMessage(`{"task":"add","a":2,"b":2}`)},
		{ID: "wrong", Spec: json.RawMessage(`{"grade":"failed"}`)},
	}
	if _, err := c.Enqueue(ctx, "example-client", evals, evalpool.EnqueueOptions{}); err != nil {
		panic(err)
	}
	err = c.Wait(ctx, "example-client", []string{"add", "wrong"}, client.WaitOptions{
		Every:    20 * time.Millisecond,
		Finished: func(f client.Finished) { fmt.Println(f.ID, f.Outcome) },
	})
	if err != nil {
		panic(err)
	}
	// Unordered output:
	// add passed
	// wrong failed
}

// A run is a named suite of evals: submitted at once, run by the workers of
// its pool, and summed up once its evals have ended.
func ExampleClient_SubmitRun() {
	ctx := context.Background()
	rdb := evaltest.ExampleClient()
	defer exampleWorker(rdb, "example-run")()

	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		panic(err)
	}
	var evals []tasks.Eval
	for _, grade := range []string{"passed", "passed", "failed"} {
		evals = append(evals, tasks.Eval{Spec: json.RawMessage(`{"grade":"` + grade + `"}`)})
	}
	r, err := c.SubmitRun(ctx, "example-run", client.RunRequest{Name: "example", Evals: evals})
	if err != nil {
		panic(err)
	}
	ids := make([]string, len(r.Keys))
	for i, key := range r.Keys {
		ids[i] = run.EvalID(r.Name, key)
	}
	if err := c.Wait(ctx, "example-run", ids, client.WaitOptions{Every: 20 * time.Millisecond}); err != nil {
		panic(err)
	}
	sum, err := c.Runs().Summarize(ctx, r.Name, "")
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: %d passed, %d failed, pass rate %.2f\n", sum.Name, sum.Passed, sum.Failed, sum.PassRate)
	// Output:
	// example: 2 passed, 1 failed, pass rate 0.67
}

// exampleWorker runs a worker for the pool name with one executor, and
// returns what stops them and deletes the pool.
func exampleWorker(rdb *redis.Client, name string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c, err := evalpool.NewClient(rdb, evalpool.ClientConfig{})
	if err != nil {
		panic(err)
	}
	p, err := c.Pool(name)
	if err != nil {
		panic(err)
	}
	ex, err := refexec.New(refexec.Options{})
	if err != nil {
		panic(err)
	}
	server := httptest.NewServer(ex)
	if _, err := p.Register(ctx, pool.Executor{URL: server.URL}); err != nil {
		panic(err)
	}
	w, err := evalpool.NewWorker(rdb, evalpool.WorkerConfig{Pools: []string{name}, Config: worker.Config{PollInterval: 50 * time.Millisecond}})
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	return func() {
		cancel()
		if err := <-ran; err != nil {
			panic(err)
		}
		server.Close()
		rdb.Del(context.Background(), p.Keys()...)
	}
}
