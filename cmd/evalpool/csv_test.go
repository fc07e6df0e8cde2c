package main

import (
	"encoding/csv"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	evalrun "github.com/evalpool/evalpool/run"
)

// TestResultsCSVEscapesFormulas: `run results --format csv` of a run whose
// keys, errors and executors start like spreadsheet formulas writes each of
// them with a leading single quote, and leaves plain numbers (a negative
// score) as they are.
func TestResultsCSVEscapesFormulas(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	store := evalrun.NewStore(srv.Client(t), evalrun.Options{})
	ctx := t.Context()
	neg := -0.5
	recs := []evalrun.Record{
		{Key: "=cmd|'/C(calc)'!A0", Status: evalrun.Failed, Error: "+SUM(A1:A9)", Executor: "@http://e:1"},
		{Key: "-2+3", Status: evalrun.Errored, Error: "\tx", Executor: "\r=1"},
		{Key: "plain", Status: evalrun.Passed, Score: &neg},
	}
	var keys []string
	for _, rec := range recs {
		keys = append(keys, rec.Key)
	}
	if err := store.Create(ctx, evalrun.Run{Name: "csv", Pool: "default", CreatedAt: time.Now(), Keys: keys}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if _, err := store.Finish(ctx, "csv", rec); err != nil {
			t.Fatal(err)
		}
	}
	r := runCLI(t, srv.URL(), "default", "run", "results", "csv", "--format", "csv")
	if r.code != 0 {
		t.Fatalf("run results: %+v", r)
	}
	rows, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil || len(rows) != 4 {
		t.Fatalf("%d rows, %v:\n%s", len(rows), err, r.stdout)
	}
	tests := []struct {
		row  int
		want []string // key, status, score, executor, error
	}{
		{1, []string{"'=cmd|'/C(calc)'!A0", "failed", "", "'@http://e:1", "'+SUM(A1:A9)"}},
		{2, []string{"'-2+3", "errored", "", "'\r=1", "'\tx"}},
		{3, []string{"plain", "passed", "-0.5", "", ""}},
	}
	for _, tt := range tests {
		row := rows[tt.row]
		got := []string{row[0], row[2], row[3], row[6], row[7]}
		if !slices.Equal(got, tt.want) {
			t.Errorf("row %d: %q, want %q", tt.row, got, tt.want)
		}
	}
	for _, row := range rows {
		for _, cell := range row {
			if cell != "" && strings.ContainsRune("=+@\t\r", rune(cell[0])) {
				t.Errorf("cell %q starts a formula", cell)
			}
		}
	}
}
