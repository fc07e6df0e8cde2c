package worker

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// commandCalls reads INFO commandstats: the calls of each command, the
// commands scripts run included, INFO's own left out.
func commandCalls(t *testing.T, c redis.UniversalClient) map[string]float64 {
	t.Helper()
	s, err := c.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]float64{}
	for line := range strings.Lines(s) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd || name == "info" {
			continue
		}
		for kv := range strings.SplitSeq(rest, ",") {
			if v, found := strings.CutPrefix(kv, "calls="); found {
				calls[name], _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	return calls
}

// holding reports whether the cleanup servers' polls are held: no eval runs,
// no cleanup was enqueued lately, and the next idle round is yet to come.
func (g *cleanupPolls) holding() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	return !now.Before(g.warm) && !g.busy() && now.Before(g.next)
}

// TestIdleWorkerIsQuiet: a worker with the default intervals, idle after
// an eval, sends Redis at most 50 commands a second (the scripts'
// commands counted), where polling its cleanup queue every 20 ms costs
// about 600.
func TestIdleWorkerIsQuiet(t *testing.T) {
	t.Parallel()
	w, b := setup(t, Config{PollInterval: DefaultPollInterval, NoExecutorDelay: DefaultNoExecutorDelay}, refexec.Options{}, refexec.Options{})
	start(t, w)
	enqueueEvals(t, b, 1, tasks.EvalOptions{}, 10*time.Second)
	completed(t, b, 1, 10*time.Second, "the eval")
	evaltest.Eventually(t, 10*time.Second, "the worker never went idle", func() bool { return w.polls != nil && w.polls.holding() })

	const window, most = 5 * time.Second, 50.0
	before, from := commandCalls(t, w.cfg.Redis), time.Now()
	time.Sleep(window) // the measurement itself: what an idle worker sends in this time
	after, took := commandCalls(t, w.cfg.Redis), time.Since(from)
	total, by := 0.0, map[string]float64{}
	for name, n := range after {
		by[name] = (n - before[name]) / took.Seconds()
		total += by[name]
	}
	if total > most {
		names := slices.SortedFunc(maps.Keys(by), func(a, b string) int { return int(by[b] - by[a]) })
		var top []string
		for _, n := range names[:min(8, len(names))] {
			top = append(top, fmt.Sprintf("%s %.1f/s", n, by[n]))
		}
		t.Fatalf("an idle worker sends %.1f commands/s, want at most %.0f; most: %s", total, most, strings.Join(top, ", "))
	}
	t.Logf("idle: %.1f commands/s", total)
}

// TestIdleWorkerReturnsExecutorsPromptly: an idle worker's cleanup servers
// look at their queues once a minute here, yet an eval that comes finds
// them polling fast, and its cleanup, of either outcome, returns its
// executor in far less.
func TestIdleWorkerReturnsExecutorsPromptly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		exec refexec.Options
		// path is the cleanup that returns the executor: the outcome's, or
		// the error handler's, whichever runs first.
		paths []string
	}{
		{"passed", refexec.Options{}, []string{tasks.PathSuccess}},
		{"failed", refexec.Options{FailRate: 1}, []string{tasks.PathFailure, tasks.PathErrorHandler}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w, b := setup(t, Config{Cleanup: CleanupOutcome, CleanupIdlePollInterval: time.Minute}, tc.exec)
			start(t, w)
			evaltest.Eventually(t, 10*time.Second, "the worker never went idle", func() bool { return w.polls != nil && w.polls.holding() })
			enqueueEvals(t, b, 1, tasks.EvalOptions{MaxRetry: -1}, 10*time.Second)
			// Far within the minute an idle round would take.
			evaltest.Eventually(t, 10*time.Second, "the executor did not come back before the idle poll", func() bool {
				n := 0.0
				for _, p := range tc.paths {
					n += releases(b, pool.Released, p)
				}
				return n == 1
			})
			assertPoolWhole(t, b)
		})
	}
}
