package evaltest

import (
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/tasks"
)

// queueInfo is a queue's counts; a queue nobody used yet counts zero.
func queueInfo(insp *asynq.Inspector, q string) (*asynq.QueueInfo, error) {
	queues, err := insp.Queues()
	if err != nil {
		return nil, err
	}
	if !slices.Contains(queues, q) {
		return &asynq.QueueInfo{Queue: q}, nil
	}
	return insp.GetQueueInfo(q)
}

// WaitEvalsDone waits until n evals are finished (completed or archived) and
// no eval or cleanup is pending, running, scheduled or waiting to retry. It
// returns the completed and archived counts of the evals queue.
func WaitEvalsDone(t testing.TB, insp *asynq.Inspector, n int, timeout time.Duration) (completed, archived int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	busy := func(q *asynq.QueueInfo) int { return q.Pending + q.Active + q.Scheduled + q.Retry }
	// Errors are retried until the deadline: callers wait across faults
	// (a Redis restart) on purpose.
	for {
		evals, err := queueInfo(insp, tasks.QueueEvals)
		var cleanup *asynq.QueueInfo
		if err == nil {
			cleanup, err = queueInfo(insp, tasks.QueueCleanup)
		}
		if err == nil {
			completed, archived = evals.Completed, evals.Archived
			if completed+archived == n && busy(evals) == 0 && busy(cleanup) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("evaltest: after %s, %d of %d evals finished; evals %+v; cleanup %+v; %v", timeout, completed+archived, n, evals, cleanup, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return completed, archived
}
