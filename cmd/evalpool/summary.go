package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	evalrun "github.com/evalpool/evalpool/run"
)

// gate is the one rule of exit codes for a run: its pass rate under
// minPassRate fails it.
func gate(sum evalrun.Summary, minPassRate float64) error {
	if sum.PassRate >= 0 && sum.PassRate < minPassRate {
		return fmt.Errorf("%w: run %s passed %.1f%%, under the %.1f%% required (%d failed, %d errored)", errEvalsFailed, sum.Name, 100*sum.PassRate, 100*minPassRate, sum.Failed, sum.Errored)
	}
	return nil
}

func printSummary(w io.Writer, s evalrun.Summary) {
	fmt.Fprintf(w, "run %s (pool %s, %d evals, submitted %s)\n", s.Name, s.Pool, s.Size, s.CreatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  passed %d, failed %d, errored %d, cancelled %d, running %d, pending %d\n", s.Passed, s.Failed, s.Errored, s.Cancelled, s.Running, s.Pending)
	printIncomplete(w, s.Name, s.Submission, s.Enqueued, s.Size)
	if s.PassRate >= 0 {
		fmt.Fprintf(w, "  pass rate %.1f%%\n", 100*s.PassRate)
	}
	if s.MeanScore != nil {
		fmt.Fprintf(w, "  score mean %.3f, median %.3f\n", *s.MeanScore, *s.MedianScore)
	}
	fmt.Fprintf(w, "  duration p50 %.3fs, p95 %.3fs; %d retries\n", s.DurationP50, s.DurationP95, s.Retries)
	for i, f := range s.Failures {
		if i == 20 {
			break
		}
		fmt.Fprintf(w, "  %s %s %s\n", f.Status, f.Key, f.Reason)
	}
	if more := len(s.Failures) + s.MoreFailures - 20; more > 0 {
		fmt.Fprintf(w, "  … and %d more failures (run results %s)\n", more, s.Name)
	}
	if c := s.Compare; c != nil {
		fmt.Fprintf(w, "  against %s: %d newly failing, %d newly passing\n", c.Against, len(c.NewlyFailing), len(c.NewlyPassing))
		for _, k := range c.NewlyFailing {
			fmt.Fprintf(w, "    newly failing %s\n", k)
		}
		for _, k := range c.NewlyPassing {
			fmt.Fprintf(w, "    newly passing %s\n", k)
		}
	}
}

func (a *app) runSummary() *cobra.Command {
	var (
		against     string
		asJSON      bool
		minPassRate float64
	)
	c := &cobra.Command{
		Use:   "summary NAME [--compare OTHER]",
		Short: "How a run went: counts, pass rate, scores, durations, failures; what changed against another run",
		Long: `How a run went. With --min-pass-rate it exits 1 when the pass rate is under
it, as run submit --wait does; without it, it never gates.`,
		Args: positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if minPassRate < 0 || minPassRate > 1 {
				return usagef("--min-pass-rate is a share from 0 to 1, got %g", minPassRate)
			}
			store, err := a.runs()
			if err != nil {
				return err
			}
			sum, err := store.Summarize(c.Context(), args[0], against)
			if err != nil {
				return err
			}
			if asJSON {
				if err := a.printJSON(sum); err != nil {
					return err
				}
			} else {
				printSummary(a.stdout, sum)
			}
			return gate(sum, minPassRate)
		},
	}
	c.Flags().StringVar(&against, "compare", "", "another run to compare with, eval key by eval key")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON on stdout")
	c.Flags().Float64Var(&minPassRate, "min-pass-rate", 0, "exit 1 when the pass rate is under this share, from 0 to 1 (no gate without it)")
	return c
}
