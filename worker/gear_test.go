package worker

import (
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// TestAnIdleWorkerLooksAtCleanupsSlowly: a worker that runs no eval costs
// Redis a poll of its queues per PollInterval, not one per
// CleanupPollInterval; an eval brings up the fast cleanup servers, which
// return its executor at once, and they stop once the worker has run
// nothing for the quiet spell.
func TestAnIdleWorkerLooksAtCleanupsSlowly(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{PollInterval: time.Second, CleanupPollInterval: 20 * time.Millisecond, Cleanup: CleanupOutcome}, refexec.Options{})
	w.gear.quiet = time.Second
	start(t, w)
	servers := func() int {
		s, err := b.insp.Servers()
		if err != nil {
			t.Fatal(err)
		}
		return len(s)
	}
	evaltest.Eventually(t, 10*time.Second, "the worker's eval and cleanup servers never came up", func() bool { return servers() == 2 })

	if rate := evaltest.CommandRate(t, w.redis, 3*time.Second); rate > 50 {
		t.Errorf("an idle worker sends Redis %.0f commands/s, want at most 50", rate)
	}

	enqueueEvals(t, b, 1, tasks.EvalOptions{}, time.Minute)
	evaltest.Eventually(t, 10*time.Second, "the fast cleanup servers never came up", func() bool { return servers() == 2+fastCleanupServers })
	evaltest.Eventually(t, 10*time.Second, "the eval never completed", func() bool {
		q, err := b.insp.GetQueueInfo(tasks.QueueEvals)
		return err == nil && q.Completed == 1
	})
	ended := time.Now()
	evaltest.Eventually(t, 10*time.Second, "the executor never came back", func() bool {
		n, err := b.pool.Counts(t.Context())
		return err == nil && n.Available == 1
	})
	if took := time.Since(ended); took > 400*time.Millisecond {
		t.Errorf("the executor came back %s after its eval ended, want its cleanup within the fast poll", took)
	}
	evaltest.Eventually(t, 10*time.Second, "the fast cleanup servers never stopped", func() bool { return !w.gear.running() && servers() == 2 })
}
