package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/redisconn"
	"github.com/evalpool/evalpool/refexec"
)

// execStats are the counters of the reference executors, read over HTTP
// at GET /v1/stats and summed.
type execStats struct {
	Served    int64 `json:"served"`
	Fenced    int64 `json:"fenced"`
	Preempted int64 `json:"preempted"`
	Overlaps  int64 `json:"overlaps"`
}

func readExecStats(t *testing.T, urls []string) execStats {
	t.Helper()
	var sum execStats
	for _, u := range urls {
		resp, err := http.Get(u + executor.PathStats)
		if err != nil {
			t.Fatal(err)
		}
		var st execStats
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s%s: %v", u, executor.PathStats, err)
		}
		sum.Served += st.Served
		sum.Fenced += st.Fenced
		sum.Preempted += st.Preempted
		sum.Overlaps += st.Overlaps
	}
	return sum
}

// sentinelInspector is an Asynq inspector over its own failover client of
// url, closed when the test ends.
func sentinelInspector(t *testing.T, url string) *asynq.Inspector {
	t.Helper()
	conn, err := redisconn.Parse(redisconn.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	client := conn.NewClient()
	t.Cleanup(func() { _ = client.Close() })
	return asynq.NewInspectorFromRedisClient(client)
}

// monitoredQueues reads Asynqmon's queue list from a dashboard.
func monitoredQueues(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/monitoring/api/queues")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Asynqmon's queues: %s %s", resp.Status, body)
	}
	return string(body)
}

// The CLI, a worker and the dashboard on --redis redis-sentinel://...: they
// find the master through the Sentinels and, after SENTINEL FAILOVER, the
// new one. The failover comes between two batches of evals, so that no
// write is in flight (a failover under load is
// TestSentinelFailoverUnderLoad, -tags sentinel).
func TestSentinelFailoverBetweenBatches(t *testing.T) {
	t.Parallel()
	const batch = 20
	sen := evaltest.StartSentinel(t, evaltest.SentinelOptions{})
	url := sen.URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{Latency: 5 * time.Millisecond})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	logs := startWorker(t, url, "--concurrency", "4", "--poll-interval", "20ms", "--retry-delay", "10ms", "--reap-interval", "1s")
	dash := startDashboard(t, url)
	insp := sentinelInspector(t, url)

	enqueue := func() {
		t.Helper()
		if r := cli("enqueue", "--spec", `{"task":"add","a":1,"b":2}`, "--count", fmt.Sprint(batch), "--max-retry", "3"); r.code != 0 {
			t.Fatalf("enqueue: %+v", r)
		}
	}
	enqueue()
	evaltest.WaitEvalsDone(t, insp, batch, 30*time.Second)
	if q := monitoredQueues(t, dash); !strings.Contains(q, `"evals"`) {
		t.Fatalf("Asynqmon does not list the evals queue: %s", q)
	}

	old := sen.MasterAddr(t)
	start := time.Now()
	master := sen.Failover(t)
	enqueue()
	completed, archived := evaltest.WaitEvalsDone(t, insp, 2*batch, 30*time.Second)
	t.Logf("%s took over from %s; the second batch of %d evals finished %s after SENTINEL FAILOVER", master, old, batch, time.Since(start).Round(time.Millisecond))
	if completed != 2*batch || archived != 0 {
		t.Errorf("%d completed, %d archived; want all %d completed", completed, archived, 2*batch)
	}
	if r := cli("pool", "check"); r.code != 0 {
		t.Errorf("pool check on the new master: %+v", r)
	}
	if q := monitoredQueues(t, dash); !strings.Contains(q, `"evals"`) {
		t.Errorf("Asynqmon after the failover: %s", q)
	}
	if n := logs.Count("READONLY"); n != 0 {
		t.Errorf("the worker logged %d READONLY errors", n)
	}
	if st := readExecStats(t, urls); st.Overlaps != 0 {
		t.Errorf("executor stats %+v: overlaps", st)
	}
}
