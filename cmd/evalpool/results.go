package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"maps"
	"slices"
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
		Long: `Each eval of a run, in order: how it ended, or that it has not. JSON Lines
has one record per line; CSV has the same columns for every row, a
metric.NAME column per metric any eval reported and a meta.KEY column per
key of the run's meta (docs/results.md).`,
		Args: positional(cobra.ExactArgs(1)),
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
			// Every row has the run's meta, and a cell for each metric
			// any eval of the run reported: one table a spreadsheet or a
			// dataframe can concatenate with other runs' and pivot.
			metrics := map[string]bool{}
			for _, rec := range rows {
				for name := range rec.Metrics {
					metrics[name] = true
				}
			}
			names, metaKeys := slices.Sorted(maps.Keys(metrics)), slices.Sorted(maps.Keys(r.Meta))
			header := []string{"key", "eval_id", "status", "score", "duration_seconds", "retries", "executor", "error", "reason", "output", "group", "epoch"}
			for _, name := range names {
				header = append(header, "metric."+name)
			}
			for _, k := range metaKeys {
				header = append(header, "meta."+k)
			}
			w := csv.NewWriter(a.stdout)
			_ = w.Write(header)
			for _, rec := range rows {
				epoch := ""
				if rec.Epoch > 0 {
					epoch = strconv.Itoa(rec.Epoch)
				}
				row := []string{rec.Key, evalrun.EvalID(r.Name, rec.Key), rec.Status, number(rec.Score), strconv.FormatFloat(rec.Duration, 'f', 3, 64), strconv.Itoa(rec.Retries), rec.Executor, rec.Error, rec.Reason(), compactJSON(rec.Output),
					rec.Group, epoch}
				for _, name := range names {
					var v *float64
					if m, ok := rec.Metrics[name]; ok {
						v = &m
					}
					row = append(row, number(v))
				}
				for _, k := range metaKeys {
					row = append(row, r.Meta[k])
				}
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

// number is a CSV cell of v: empty for none.
func number(v *float64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatFloat(*v, 'g', -1, 64)
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
