package tasks_test

import (
	"encoding/json"
	"fmt"

	"github.com/evalpool/evalpool/tasks"
)

// An eval becomes an Asynq task of its pool's evals queue, its task ID the
// eval ID; a worker reads the payload back with ParseEval.
func ExampleNewEval() {
	task, err := tasks.NewEval(tasks.Eval{
		ID:      "eval-42",
		Pool:    "gpu",
		Spec:    json.RawMessage(`{"prompt":"2+2"}`),
		Require: map[string]string{"gpu": "a100"},
	}, tasks.EvalOptions{MaxRetry: 2})
	if err != nil {
		panic(err)
	}
	e, err := tasks.ParseEval(task.Payload())
	if err != nil {
		panic(err)
	}
	fmt.Println(task.Type(), tasks.Queues(e.Pool).Evals, e.ID, e.Require["gpu"], e.Timeout())
	// Output: eval:run evals:gpu eval-42 a100 10m0s
}
