package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

type testBundle struct {
	client *redis.Client
	pool   *pool.Pool
	url    string
}

// setup serves a dashboard over a Redis of its own (Asynqmon lists every
// queue of its Redis) with three executors registered.
func setup(t *testing.T) (*Dashboard, *testBundle) {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	p, err := pool.New(client, pool.Options{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"http://e1:9001", "http://e2:9001", "http://e3:9001"} {
		if _, err := p.Register(t.Context(), pool.Executor{URL: u}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(Options{Pool: p, Redis: client, Asynqmon: asynq.RedisClientOpt{Addr: srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ts := httptest.NewServer(d)
	t.Cleanup(ts.Close)
	return d, &testBundle{client: client, pool: p, url: ts.URL}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	l, err := b.pool.Acquire(t.Context(), "eval-7", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	code, body := get(t, b.url+"/api/pool")
	var v struct {
		Pool      string                `json:"pool"`
		Executors []pool.ExecutorStatus `json:"executors"`
		Monitor   string                `json:"monitoring_path"`
	}
	if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil || v.Pool != "web" || len(v.Executors) != 3 || v.Monitor != MonitoringPath {
		t.Fatalf("/api/pool: %d %s: %v", code, body, err)
	}
	leased := 0
	for _, e := range v.Executors {
		if e.State == pool.StateLeased && e.URL == l.URL && e.Lease.EvalID == "eval-7" {
			leased++
		}
	}
	if leased != 1 {
		t.Fatalf("/api/pool does not show the lease: %s", body)
	}

	if code, body := get(t, b.url+"/"); code != 200 || !strings.Contains(body, "api/pool") {
		t.Fatalf("/: %d", code)
	}
	if code, body := get(t, b.url+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, b.url+"/monitoring/"); code != 200 || !strings.Contains(body, "<div id=\"root\"") {
		t.Fatalf("/monitoring/: %d %.200s", code, body)
	}
	if code, body := get(t, b.url+"/monitoring/api/queues"); code != 200 || !strings.Contains(body, "queues") {
		t.Fatalf("/monitoring/api/queues: %d %.200s", code, body)
	}

	code, body = get(t, b.url+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if code != 200 || err != nil {
		t.Fatalf("/metrics: %d, %v", code, err)
	}
	got := map[string]float64{}
	for _, m := range families["evalpool_executors"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "state" {
				got[lp.GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	// The states are exclusive: their sum is the registered total.
	sum := 0.0
	for _, v := range got {
		sum += v
	}
	registered := families["evalpool_executors_registered"].GetMetric()
	if got["available"] != 2 || got["leased"] != 1 || sum != 3 || len(registered) != 1 || registered[0].GetGauge().GetValue() != 3 {
		t.Fatalf("evalpool_executors = %v (sum %g), registered %v", got, sum, registered)
	}
}

// /api/pool carries, under the names index.html reads, each executor's
// labels, fails, graded results and quarantine, and the quarantined count.
func TestAPIPoolHealth(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	ctx := t.Context()
	const gpu = "http://gpu:9001"
	if _, err := b.pool.Register(ctx, pool.Executor{URL: gpu, Labels: map[string]string{"gpu": "a100"}}); err != nil {
		t.Fatal(err)
	}
	l, err := b.pool.AcquireWith(ctx, "graded", time.Minute, pool.AcquireArgs{Require: map[string]string{"gpu": "a100"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.ReleaseWith(ctx, l, pool.ReleaseArgs{Path: "test", Verdict: pool.VerdictPassed}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Quarantine(ctx, gpu, pool.ReasonOperator); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, b.url+"/api/pool")
	var v struct {
		Counts    map[string]int   `json:"counts"`
		Executors []map[string]any `json:"executors"`
	}
	if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil {
		t.Fatalf("/api/pool: %d %s: %v", code, body, err)
	}
	if v.Counts["quarantined"] != 1 {
		t.Errorf("counts = %v, want 1 quarantined", v.Counts)
	}
	var e map[string]any
	for _, x := range v.Executors {
		if x["url"] == gpu {
			e = x
		}
	}
	q, _ := e["quarantine"].(map[string]any)
	ls, _ := e["labels"].(map[string]any)
	if e["state"] != "quarantined" || ls["gpu"] != "a100" || e["fails"] != 0.0 || e["passed"] != 1.0 || e["failed"] != 0.0 || q == nil {
		t.Fatalf("%s in /api/pool: %v", gpu, e)
	}
	for _, k := range []string{"since", "next_probe"} {
		if s, _ := q[k].(string); s == "" {
			t.Errorf("quarantine.%s = %v, want a time", k, q[k])
		} else if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			t.Errorf("quarantine.%s: %v", k, err)
		}
	}
	if q["reason"] != pool.ReasonOperator || q["probes"] != 0.0 {
		t.Errorf("quarantine = %v, want reason operator, 0 probes", q)
	}
}

// Redis gone: the API says so with a 503, the page stays up.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	_ = b.client.Close()
	if code, _ := get(t, b.url+"/api/pool"); code != http.StatusServiceUnavailable {
		t.Fatalf("/api/pool without Redis: %d, want 503", code)
	}
	if code, _ := get(t, b.url+"/"); code != 200 {
		t.Fatalf("/ without Redis: %d", code)
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	if _, err := New(Options{}); err == nil {
		t.Fatal("New accepted empty options")
	}
}
