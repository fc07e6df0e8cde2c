package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// TestRunReadsAtMaxmemory fills the Redis to its maxmemory (noeviction):
// the run endpoints that read still answer, and a submission is refused
// with 503 and one line naming the cause.
func TestRunReadsAtMaxmemory(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	decodeAs[RunCreated](t, do(t, "POST", b.url+"/runs", `{"name":"before","evals":[{"eval_id":"a","spec":{}}]}`), http.StatusCreated)
	if err := b.client.ConfigSet(t.Context(), "maxmemory", "8mb").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.client.ConfigSet(t.Context(), "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	evaltest.FillRedis(t, b.client)
	for _, path := range []string{"/runs", "/runs/before", "/runs/before/progress", "/runs/before/results"} {
		if a := do(t, "GET", b.url+path, ""); a.code != http.StatusOK {
			t.Errorf("GET %s at maxmemory: %s", path, a)
		}
	}
	a := do(t, "POST", b.url+"/runs", `{"name":"after","evals":[{"eval_id":"a","spec":{}}]}`)
	if a.code != http.StatusServiceUnavailable || !strings.Contains(a.errMsg(), "redis is full") || strings.Contains(a.errMsg(), "OOM") {
		t.Errorf("POST /runs at maxmemory: %s; want 503 saying Redis is full", a)
	}
}
