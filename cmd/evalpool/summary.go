package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	evalrun "github.com/evalpool/evalpool/run"
)

// gate is the one rule of exit codes for a run: its pass rate under
// minPassRate fails it.
func gate(sum evalrun.Summary, minPassRate float64) error {
	switch {
	case sum.PassRate < 0 && minPassRate > 0:
		// Nothing graded passes no gate: a CI job whose evals were all
		// cancelled (or none ended) is not green.
		return fmt.Errorf("%w: run %s has no graded eval (%d cancelled, %d not ended), so nothing to pass %.1f%% of", errEvalsFailed, sum.Name, sum.Cancelled, sum.Size-sum.Done(), 100*minPassRate)
	case sum.PassRate >= 0 && sum.PassRate < minPassRate:
		return fmt.Errorf("%w: run %s passed %.1f%%, under the %.1f%% required (%d failed, %d errored)", errEvalsFailed, sum.Name, 100*sum.PassRate, 100*minPassRate, sum.Failed, sum.Errored)
	}
	return nil
}

// maxPrintedGroups bounds the groups a printed summary lists, each way:
// --json has more (run.MaxSummaryGroups).
const maxPrintedGroups = 50

func printSummary(w io.Writer, s evalrun.Summary) {
	fmt.Fprintf(w, "run %s (pool %s, %d evals, submitted %s)\n", s.Name, s.Pool, s.Size, s.CreatedAt.UTC().Format(time.RFC3339))
	if len(s.Meta) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(s.Meta)) {
			kv = append(kv, k+"="+quoteSpaced(s.Meta[k]))
		}
		fmt.Fprintf(w, "  meta %s\n", strings.Join(kv, " "))
	}
	if sh := s.Share; sh.Weight > 1 || sh.MaxExecutors > 0 || sh.Priority == evalrun.PriorityHigh {
		fmt.Fprintf(w, "  share weight %d, at most %d executors (0: no cap), priority %s\n", sh.Weight, sh.MaxExecutors, sh.Priority)
	}
	fmt.Fprintf(w, "  passed %d, failed %d, errored %d, cancelled %d, running %d, pending %d\n", s.Passed, s.Failed, s.Errored, s.Cancelled, s.Running, s.Pending)
	printIncomplete(w, s.Name, s.Submission, s.Enqueued, s.Size)
	if s.PassRate >= 0 {
		fmt.Fprintf(w, "  pass rate %.1f%%\n", 100*s.PassRate)
	}
	var at []string
	if s.PassAt1 != nil {
		at = append(at, fmt.Sprintf("pass@1 %.1f%%", 100*(*s.PassAt1)))
	}
	if s.PassAtK != nil {
		at = append(at, fmt.Sprintf("pass@%d %.1f%%", s.Epochs, 100*(*s.PassAtK)))
	}
	if len(at) > 0 {
		fmt.Fprintf(w, "  %s (%d epochs)\n", strings.Join(at, ", "), s.Epochs)
	}
	switch {
	case s.Score != nil && s.MedianScore != nil:
		fmt.Fprintf(w, "  score mean %s, median %.3f\n", stat(s.Score), *s.MedianScore)
	case s.MeanScore != nil:
		fmt.Fprintf(w, "  score mean %.3f, median %.3f\n", *s.MeanScore, *s.MedianScore)
	}
	for _, name := range slices.Sorted(maps.Keys(s.Metrics)) {
		m := s.Metrics[name]
		fmt.Fprintf(w, "  %s %s\n", name, stat(&m))
	}
	fmt.Fprintf(w, "  duration p50 %.3fs, p95 %.3fs; %d retries\n", s.DurationP50, s.DurationP95, s.Retries)
	printGroups(w, s.Groups, s.MoreGroups)
	for i, f := range s.Failures {
		if i == 20 {
			break
		}
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("  %s %s %s", f.Status, f.Key, f.Reason), " "))
	}
	if more := len(s.Failures) + s.MoreFailures - 20; more > 0 {
		fmt.Fprintf(w, "  … and %d more failures (run results %s)\n", more, s.Name)
	}
	if c := s.Compare; c != nil {
		fmt.Fprintf(w, "  against %s: %d newly failing, %d newly passing\n", c.Against, len(c.NewlyFailing), len(c.NewlyPassing))
		if d := c.PassRate; d != nil {
			fmt.Fprintf(w, "    pass rate %s\n", rateDelta(*d))
		}
		for _, name := range slices.Sorted(maps.Keys(c.Metrics)) {
			d := c.Metrics[name]
			fmt.Fprintf(w, "    %s %.3f → %.3f (%+.3f)\n", name, d.Before, d.After, d.Delta)
		}
		for i, g := range c.Groups {
			if i == maxPrintedGroups {
				fmt.Fprintf(w, "    … and %d more groups (run summary --json)\n", len(c.Groups)-i)
				break
			}
			fmt.Fprintf(w, "    group %s: pass rate %s\n", g.Group, rateDelta(g.PassRate))
		}
		for _, k := range c.NewlyFailing {
			fmt.Fprintf(w, "    newly failing %s\n", k)
		}
		for _, k := range c.NewlyPassing {
			fmt.Fprintf(w, "    newly passing %s\n", k)
		}
	}
}

// printGroups prints a table of the groups, the first maxPrintedGroups of
// them, more being the groups the summary did not list.
func printGroups(w io.Writer, groups []evalrun.GroupSummary, more int) {
	if len(groups) == 0 {
		return
	}
	fmt.Fprintf(w, "  %d groups:\n", len(groups)+more)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    group\tpassed/failed/errored\tpass rate\tscore mean")
	for i, g := range groups {
		if i == maxPrintedGroups {
			break
		}
		rate, score := "-", "-"
		if g.PassRate >= 0 {
			rate = fmt.Sprintf("%.1f%%", 100*g.PassRate)
		}
		if g.Score != nil {
			score = fmt.Sprintf("%.3f", g.Score.Mean)
		}
		fmt.Fprintf(tw, "    %s\t%d/%d/%d\t%s\t%s\n", g.Group, g.Passed, g.Failed, g.Errored, rate, score)
	}
	_ = tw.Flush()
	if more := len(groups) + more - maxPrintedGroups; more > 0 {
		fmt.Fprintf(w, "    … and %d more groups (run summary --json)\n", more)
	}
}

// stat is a Stat as a summary prints it: "0.712 ± 0.031 (n=30)".
func stat(s *evalrun.Stat) string {
	return fmt.Sprintf("%.3f ± %.3f (n=%d)", s.Mean, s.Stderr, s.N)
}

// rateDelta is a pass rate's delta as a summary prints it, its change in
// percentage points: "70.0% → 63.3% (-6.7 pp)".
func rateDelta(d evalrun.Delta) string {
	return fmt.Sprintf("%.1f%% → %.1f%% (%+.1f pp)", 100*d.Before, 100*d.After, 100*d.Delta)
}

// quoteSpaced quotes a meta value that holds a blank or a quote, or none,
// so that "k=v" pairs split back where they were joined.
func quoteSpaced(v string) string {
	if v == "" || strings.ContainsRune(v, '"') || strings.IndexFunc(v, unicode.IsSpace) >= 0 {
		return strconv.Quote(v)
	}
	return v
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
