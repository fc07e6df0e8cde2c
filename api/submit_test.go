package api

import (
	"net/http"
	"strings"
	"testing"
)

// noTasks fails the test if Redis holds a task or a run.
func noTasks(t *testing.T, b *bundle, what string) {
	t.Helper()
	for _, pattern := range []string{"asynq:*", "evalpool:run*"} {
		if ks, err := b.client.Keys(t.Context(), pattern).Result(); err != nil || len(ks) != 0 {
			t.Fatalf("%s left %v (%v) behind", what, ks, err)
		}
	}
}

// A submission to a pool with no executor registered is a 422 naming the
// pool, and enqueues nothing, unless allow_empty_pool says the executors
// are to come.
func TestSubmitToAnEmptyPool(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	tests := []struct {
		name, path, body, allowed string
		created                   int
	}{
		{"run", "/runs", `{"name":"early","evals":[{"spec":{}},{"spec":{}}]}`, `{"name":"early","evals":[{"spec":{}},{"spec":{}}],"allow_empty_pool":true}`, http.StatusCreated},
		{"eval", "/evals", `{"eval_id":"early","spec":{}}`, `{"eval_id":"early","spec":{},"allow_empty_pool":true}`, http.StatusCreated},
		{"eval requiring labels", "/evals", `{"eval_id":"gpu","spec":{},"require":{"gpu":"a100"}}`, `{"eval_id":"gpu","spec":{},"require":{"gpu":"a100"},"allow_empty_pool":true}`, http.StatusCreated},
	}
	for _, tt := range tests {
		a := do(t, http.MethodPost, b.url+tt.path, tt.body)
		if a.code != http.StatusUnprocessableEntity || !strings.Contains(a.errMsg(), "no executor registered in pool apitest") || !strings.Contains(a.errMsg(), "allow_empty_pool") {
			t.Errorf("%s in an empty pool: %s; want a 422 naming the pool and allow_empty_pool", tt.name, a)
		}
	}
	noTasks(t, b, "a refused submission")
	for _, tt := range tests {
		if a := do(t, http.MethodPost, b.url+tt.path, tt.allowed); a.code != tt.created {
			t.Errorf("%s with allow_empty_pool: %s; want %d", tt.name, a, tt.created)
		}
	}
}

// A body that is not UTF-8 is a 400 saying so, and submits nothing:
// encoding/json would turn its bytes into U+FFFD in a string, or carry them
// to the grader as they are in a spec.
func TestNonUTF8BodyIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	tests := []struct{ name, path, body string }{
		{"run, spec", "/runs", `{"evals":[{"spec":{"q":"bad` + "\xff\xfe" + `"}}]}`},
		{"run, eval ID", "/runs", `{"evals":[{"eval_id":"k` + "\xff" + `","spec":{}}]}`},
		{"run, name", "/runs", `{"name":"r` + "\xc3" + `","evals":[{"spec":{}}]}`},
		{"eval, spec", "/evals", `{"spec":"bad` + "\xff" + `"}`},
		{"eval, eval ID", "/evals", `{"eval_id":"e` + "\xed\xa0\x80" + `","spec":{}}`},
	}
	for _, tt := range tests {
		a := do(t, http.MethodPost, b.url+tt.path, tt.body)
		if a.code != http.StatusBadRequest || !strings.Contains(a.errMsg(), "not valid UTF-8") {
			t.Errorf("%s: %s; want a 400 saying the body is not valid UTF-8", tt.name, a)
		}
	}
	noTasks(t, b, "a non-UTF-8 body")
}

// A run's meta and epochs, and an eval's group, go through POST /runs: a
// suite of 2 evals in 3 epochs is 6 evals, KEY#1 to KEY#3; bad meta or
// epochs are a 400 that submits nothing.
func TestRunMetaEpochsAndGroups(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{}, nil)
	for _, tt := range []struct{ name, body, want string }{
		{"meta key", `{"meta":{"no space":"x"},"evals":[{"spec":{}}]}`, `meta key "no space"`},
		{"meta value", `{"meta":{"note":"a\nb"},"evals":[{"spec":{}}]}`, "no control character"},
		{"epochs", `{"epochs":101,"evals":[{"spec":{}}]}`, "101 epochs: want 1 to 100"},
		{"group", `{"evals":[{"spec":{},"group":"a\u0000b"}]}`, "no control character"},
	} {
		if a := do(t, http.MethodPost, b.url+"/runs", tt.body); a.code != http.StatusBadRequest || !strings.Contains(a.errMsg(), tt.want) {
			t.Errorf("%s: %s; want a 400 holding %q", tt.name, a, tt.want)
		}
	}
	noTasks(t, b, "a refused run")
	a := do(t, http.MethodPost, b.url+"/runs", `{"name":"repeated","epochs":3,"meta":{"model":"m1"},"evals":[{"eval_id":"q1","spec":{},"group":"math"},{"eval_id":"q2","spec":{}}]}`)
	if a.code != http.StatusCreated || !strings.Contains(string(a.body), `"size":6`) {
		t.Fatalf("POST /runs of 2 evals in 3 epochs: %s; want 201, size 6", a)
	}
	a = do(t, http.MethodGet, b.url+"/runs/repeated", "")
	if a.code != http.StatusOK || !strings.Contains(string(a.body), `"meta":{"model":"m1"}`) || !strings.Contains(string(a.body), `"epochs":3`) {
		t.Fatalf("GET /runs/repeated: %s; want its meta and epochs", a)
	}
	if a := do(t, http.MethodGet, b.url+"/evals/repeated%2Fq1%232", ""); !strings.Contains(string(a.body), `"group":"math"`) || !strings.Contains(string(a.body), `"epoch":2`) {
		t.Errorf("GET /evals/repeated/q1#2: %s; want its group and epoch", a)
	}
}
