package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	evalrun "github.com/evalpool/evalpool/run"
)

func (a *app) runResults() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "results NAME [--format jsonl|csv]",
		Short: "Each eval of a run, in order: how it ended, or that it has not",
		Args:  positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if format != "jsonl" && format != "csv" {
				return usagef("--format is jsonl or csv, got %q", format)
			}
			store, err := a.runs()
			if err != nil {
				return err
			}
			r, rows, err := store.Results(c.Context(), args[0])
			if err != nil {
				return err
			}
			if format == "jsonl" {
				enc := json.NewEncoder(a.stdout)
				for _, rec := range rows {
					if err := enc.Encode(struct {
						EvalID string `json:"eval_id"`
						evalrun.Record
					}{evalrun.EvalID(r.Name, rec.Key), rec}); err != nil {
						return err
					}
				}
				return nil
			}
			w := csv.NewWriter(a.stdout)
			_ = w.Write([]string{"key", "eval_id", "status", "score", "duration_seconds", "retries", "executor", "error", "reason", "output"})
			for _, rec := range rows {
				score := ""
				if rec.Score != nil {
					score = strconv.FormatFloat(*rec.Score, 'g', -1, 64)
				}
				row := []string{rec.Key, evalrun.EvalID(r.Name, rec.Key), rec.Status, score, strconv.FormatFloat(rec.Duration, 'f', 3, 64), strconv.Itoa(rec.Retries), rec.Executor, rec.Error, rec.Reason(), compactJSON(rec.Output)}
				for i := range row {
					row[i] = csvCell(row[i])
				}
				_ = w.Write(row)
			}
			w.Flush()
			return w.Error()
		},
	}
	c.Flags().StringVar(&format, "format", "jsonl", "jsonl or csv")
	return c
}

// compactJSON is raw JSON on one line; empty for none.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// csvCell escapes a cell a spreadsheet would run as a formula: one that
// starts with = + - @, a tab or a carriage return gets a leading single
// quote (OWASP's rule for CSV injection), unless it is a plain number, such
// as a negative score, which no spreadsheet runs.
func csvCell(s string) string {
	if s == "" || !strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return s
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return s
	}
	return "'" + s
}
