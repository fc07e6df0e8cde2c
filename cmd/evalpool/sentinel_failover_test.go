//go:build sentinel

package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// A failover in the middle of a run, on Redis as it is deployed with
// Sentinel (a master, a replica, three Sentinels): the worker, on
// --redis redis-sentinel://..., follows the new master, every eval finishes,
// and no executor ever runs two evals at once.
//
// Replication is asynchronous, so the writes the old master took between
// the promotion and the moment the clients left it (about a second) are
// lost: evals whose completion was among them run again (at least once, as
// Asynq promises), and a few tasks stay active on the new master with no
// worker on them until their lease (30 s) lapses and Asynq's recoverer
// (every minute, for leases lapsed 30 s ago) retries them. That takes one
// to two minutes, hence the build tag. (min-replicas-to-write 1 on a master
// with one replica trades the re-runs for a stall of about 15 s, until the
// old master rejoins as a replica, and still orphans tasks.)
//
//	go test -race -tags sentinel -run TestSentinelFailoverUnderLoad -count=1 -v ./cmd/evalpool/
func TestSentinelFailoverUnderLoad(t *testing.T) {
	t.Parallel()
	const first, second = 100, 20
	sen := evaltest.StartSentinel(t, evaltest.SentinelOptions{})
	url := sen.URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{Latency: 20 * time.Millisecond})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	logs := startWorker(t, url, "--concurrency", "4", "--cleanup", "both", "--poll-interval", "20ms",
		"--retry-delay", "10ms", "--reap-interval", "1s", "--lease-ttl", "2s")
	insp := sentinelInspector(t, url)
	completed := func(insp *asynq.Inspector) int {
		q, err := insp.GetQueueInfo(tasks.QueueEvals)
		if err != nil {
			return -1
		}
		return q.Completed
	}

	start := time.Now()
	if r := cli("enqueue", "--spec", `{"task":"add","a":1,"b":2}`, "--count", fmt.Sprint(first), "--max-retry", "5", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	evaltest.Eventually(t, 30*time.Second, "a third of the evals never completed", func() bool { return completed(insp) >= first/3 })
	before := completed(insp)
	oldMaster := sen.MasterAddr(t)
	failedOver := time.Now()
	newMaster := sen.Failover(t)
	promoted := time.Since(failedOver)

	// Recovered: an eval completes on the new master, read there directly.
	direct := redis.NewClient(&redis.Options{Addr: newMaster})
	defer direct.Close()
	onNew := asynq.NewInspectorFromRedisClient(direct)
	atPromotion := completed(onNew)
	evaltest.Eventually(t, 60*time.Second, "no eval completed on the new master "+newMaster, func() bool {
		n := completed(onNew)
		return n > atPromotion && n > 0
	})
	recovered := time.Since(failedOver)

	// Orphans: tasks left active on the new master with nobody working on
	// them, their completion written to the old master and lost.
	stop := make(chan struct{})
	orphans := make(chan int)
	go func() { orphans <- watchOrphans(onNew, stop) }()
	done, archived := evaltest.WaitEvalsDone(t, insp, first, 4*time.Minute)
	allDone := time.Since(failedOver)
	close(stop)
	orphaned := <-orphans
	readonly, syncs := logs.Count("READONLY"), logs.Count("Could not move task")

	// The Sentinels turn the old master into a replica of the new one at
	// their next look at it; a worker still writing there would now fail
	// with READONLY, again and again.
	sen.WaitReplica(t, oldMaster, 30*time.Second)
	if r := cli("enqueue", "--spec", `{"task":"add","a":3,"b":4}`, "--count", fmt.Sprint(second), "--max-retry", "5", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("enqueue after the failover: %+v", r)
	}
	done2, archived2 := evaltest.WaitEvalsDone(t, insp, first+second, 60*time.Second)
	if n := logs.Count("READONLY"); n != readonly {
		t.Errorf("the worker logged %d READONLY errors after it had recovered: it did not follow the new master", n-readonly)
	}
	if archived2 != 0 {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "archiv") {
				t.Log(line)
			}
		}
	}

	st := readExecStats(t, urls)
	if st.Overlaps != 0 {
		t.Errorf("the executors report %d overlaps", st.Overlaps)
	}
	if r := cli("pool", "check"); r.code != 0 {
		t.Errorf("pool check: %+v", r)
	}
	if r := cli("pool", "status", "--json"); !strings.Contains(r.stdout, `"available": 2`) {
		t.Errorf("pool status: %s", r.stdout)
	}
	t.Logf("first batch: %d completed, %d archived in %s; failover at %d completed: %s promoted %s after SENTINEL FAILOVER, an eval completed there %s after it, the batch was done %s after it",
		done, archived, time.Since(start).Round(time.Millisecond), before, newMaster, promoted.Round(time.Millisecond), recovered.Round(time.Millisecond), allDone.Round(time.Millisecond))
	t.Logf("%d tasks orphaned on the new master; worker log: %d READONLY lines, %d failed Asynq syncs (NOT FOUND: dequeued on the old master); executors: %+v", orphaned, readonly, syncs, st)
	fmt.Printf("sentinel: evals %d+%d, %d completed, %d archived; SENTINEL FAILOVER after %d: promoted in %s, evals completing on the new master after %s, all done after %s (%d tasks orphaned by writes lost with the old master, rerun by Asynq's recoverer); %d evals run %d times at the executors; READONLY errors %d; overlaps %d\n",
		first, second, done2, archived2, before, promoted.Round(10*time.Millisecond), recovered.Round(10*time.Millisecond), allDone.Round(time.Second),
		orphaned, first+second, st.Served, readonly, st.Overlaps)
}

// watchOrphans counts the tasks that stay active on insp's Redis for more
// than 5 s (an eval takes 20 ms) until stop is closed.
func watchOrphans(insp *asynq.Inspector, stop <-chan struct{}) int {
	seen := map[string]time.Time{}
	orphans := map[string]bool{}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return len(orphans)
		case <-tick.C:
		}
		now := map[string]time.Time{}
		for _, q := range []string{tasks.QueueEvals, tasks.QueueCleanup} {
			active, err := insp.ListActiveTasks(q)
			if err != nil {
				now = seen // keep counting across a failed look
				break
			}
			for _, task := range active {
				first, ok := seen[task.ID]
				if !ok {
					first = time.Now()
				}
				if time.Since(first) > 5*time.Second {
					orphans[task.ID] = true
				}
				now[task.ID] = first
			}
		}
		seen = now // a task no longer active starts afresh if it comes back
	}
}
