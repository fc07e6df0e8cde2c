package main

import (
	"encoding/csv"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
	evalrun "github.com/evalpool/evalpool/run"
)

// TestResultsMetricsColumns: run results --format csv keeps its columns,
// then has group, epoch, a metric.NAME column per metric any eval
// reported (sorted; empty where an eval did not) and a meta.KEY column
// per meta key; JSON Lines carry group, epoch and metrics, not the meta.
func TestResultsMetricsColumns(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	store := evalrun.NewStore(srv.Client(t), evalrun.Options{})
	recordRun(t, store, "r", 2, map[string]string{"model": "m1", "commit": "=abc"}, []string{"a", "b"},
		evalrun.Record{Key: "a", Epoch: 1, Group: "math", Status: evalrun.Passed, Score: score(1), Metrics: map[string]float64{"f1": 0.5, "accuracy": 1}},
		evalrun.Record{Key: "a", Epoch: 2, Group: "math", Status: evalrun.Failed, Score: score(0), Metrics: map[string]float64{"accuracy": 0}},
		evalrun.Record{Key: "b", Epoch: 1, Status: evalrun.Errored, Error: "boom"})

	r := runCLI(t, srv.URL(), "default", "run", "results", "r", "--format", "csv")
	if r.code != 0 {
		t.Fatalf("run results: %+v", r)
	}
	rows, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil || len(rows) != 5 {
		t.Fatalf("%d rows, %v:\n%s", len(rows), err, r.stdout)
	}
	header := []string{"key", "eval_id", "status", "score", "duration_seconds", "retries", "executor", "error", "reason", "output",
		"group", "epoch", "metric.accuracy", "metric.f1", "meta.commit", "meta.model"}
	if !slices.Equal(rows[0], header) {
		t.Fatalf("header %q, want %q", rows[0], header)
	}
	tests := []struct {
		row  int
		want []string // key, status, then from group on
	}{
		{1, []string{"a#1", "passed", "math", "1", "1", "0.5", "'=abc", "m1"}},
		{2, []string{"a#2", "failed", "math", "2", "0", "", "'=abc", "m1"}},
		{3, []string{"b#1", "errored", "", "1", "", "", "'=abc", "m1"}},
		{4, []string{"b#2", "pending", "", "", "", "", "'=abc", "m1"}},
	}
	for _, tt := range tests {
		row := rows[tt.row]
		got := append([]string{row[0], row[2]}, row[10:]...)
		if !slices.Equal(got, tt.want) {
			t.Errorf("row %d: %q, want %q", tt.row, got, tt.want)
		}
	}

	r = runCLI(t, srv.URL(), "default", "run", "results", "r")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 4 {
		t.Fatalf("run results: %+v", r)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if first["group"] != "math" || first["epoch"] != 1.0 || first["metrics"].(map[string]any)["f1"] != 0.5 || first["meta"] != nil {
		t.Errorf("first line %s: want its group, epoch and metrics, no meta", lines[0])
	}
}
