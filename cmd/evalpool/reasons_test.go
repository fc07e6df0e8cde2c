package main

import (
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	evalrun "github.com/evalpool/evalpool/run"
)

// Finding 6 of issue 22: `run summary` says why each failed and errored
// eval did, and the CSV export has each eval's reason and output.
func TestRunSummaryAndCSVSayWhy(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	store := evalrun.NewStore(srv.Client(t), evalrun.Options{})
	ctx := t.Context()
	three, one := 3, 1.0
	recs := []evalrun.Record{
		{Key: "q1", Status: evalrun.Passed, Score: &one, Output: json.RawMessage(`{"answer":42}`)},
		{Key: "q2", Status: evalrun.Failed, Output: json.RawMessage(`{"got":41,"want":42}`)},
		{Key: "q3", Status: evalrun.Errored, ExitCode: &three, Stderr: "Traceback\nValueError: cannot grade\n"},
		{Key: "q4", Status: evalrun.Errored, Error: "grader timed out"},
	}
	keys := make([]string, len(recs))
	for i, rec := range recs {
		keys[i] = rec.Key
	}
	if err := store.Create(ctx, evalrun.Run{Name: "why", Pool: "default", CreatedAt: time.Now(), Keys: keys}); err != nil {
		t.Fatal(err)
	}
	if err := store.Submitted(ctx, "why"); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if _, err := store.Finish(ctx, "why", rec); err != nil {
			t.Fatal(err)
		}
	}

	r := runCLI(t, srv.URL(), "default", "run", "summary", "why")
	for _, want := range []string{
		`failed q2 output {"got":41,"want":42}`,
		"errored q3 exit code 3: ValueError: cannot grade",
		"errored q4 grader timed out",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("run summary lacks %q:\n%s", want, r.stdout)
		}
	}

	r = runCLI(t, srv.URL(), "default", "run", "results", "why", "--format", "csv")
	rows, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil || len(rows) != 5 {
		t.Fatalf("%d rows, %v:\n%s", len(rows), err, r.stdout)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, h := range []string{"error", "reason", "output"} {
		if _, ok := col[h]; !ok {
			t.Fatalf("the CSV has no %s column: %q", h, rows[0])
		}
	}
	tests := []struct {
		row            int
		reason, output string
	}{
		{1, "", `{"answer":42}`},
		{2, `output {"got":41,"want":42}`, `{"got":41,"want":42}`},
		{3, "exit code 3: ValueError: cannot grade", ""},
		{4, "grader timed out", ""},
	}
	for _, tt := range tests {
		if got := rows[tt.row][col["reason"]]; got != tt.reason {
			t.Errorf("row %d: reason %q, want %q", tt.row, got, tt.reason)
		}
		if got := rows[tt.row][col["output"]]; got != tt.output {
			t.Errorf("row %d: output %q, want %q", tt.row, got, tt.output)
		}
	}
}
