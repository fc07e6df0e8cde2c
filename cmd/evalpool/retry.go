package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/client"
	evalrun "github.com/evalpool/evalpool/run"
)

func (a *app) runRetry() *cobra.Command {
	var (
		errored, failed bool
		file            string
		wait            bool
		minPassRate     float64
	)
	c := &cobra.Command{
		Use:   "retry NAME [--errored] [--failed] [--file suite.jsonl] [--wait]",
		Short: "Run a run's errored and/or failed evals again, inside the run, under the same eval IDs",
		Long: `Run again the evals of run NAME that ended errored (--errored) or failed
(--failed), both when neither is given, as evals of the same run under the
same IDs (NAME/KEY): its status, summary, results, compare and followers see
their new ends. Passed and cancelled evals are never retried; in a run still
running, only the evals that ended are. Each retried eval gets its old
task's retries and timeout again.

An eval's spec is taken from its Asynq task, which is kept an hour (the run's
--task-retention) after it ended: past that, give the run's suite with --file
(the file it was submitted from) to take the specs from.

--wait follows the run to its end as run submit --wait does.`,
		Args: positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := evalrun.ValidateName(name); err != nil {
				return usageError{err}
			}
			if minPassRate > 1 {
				return usagef("--min-pass-rate is a share from 0 to 1, got %g", minPassRate)
			}
			var opts client.RetryOptions
			if errored {
				opts.Statuses = append(opts.Statuses, evalrun.Errored)
			}
			if failed {
				opts.Statuses = append(opts.Statuses, evalrun.Failed)
			}
			if file != "" {
				suite, err := readEvalFile(file)
				if err != nil {
					return err
				}
				opts.Suite = suite
			}
			ep, err := a.evalpool()
			if err != nil {
				return err
			}
			n, err := ep.RetryRun(c.Context(), name, opts)
			if errors.Is(err, client.ErrTaskGone) {
				return fmt.Errorf("%w: give it with --file SUITE.jsonl, the file the run was submitted from", err)
			}
			if err != nil {
				return err
			}
			if n.Evals() == 0 {
				fmt.Fprintf(a.stdout, "nothing to retry in run %s\n", name)
				return nil
			}
			fmt.Fprintf(a.stdout, "retried %d evals of run %s (%d errored, %d failed)\n", n.Evals(), name, n.Errored, n.Failed)
			if !wait {
				return nil
			}
			p, err := a.runPool(c.Context(), name)
			if err != nil {
				return err
			}
			return a.waitRun(c.Context(), ep.Runs(), name, minPassRate, &rewinds{
				watch: client.RewindWatch{Pool: p},
				resubmit: func(context.Context) error {
					return fmt.Errorf("run %s: Redis's data went back in time, or the run vanished, while its retried evals ran: see `evalpool run status %s`, and retry again", name, name)
				},
			})
		},
	}
	f := c.Flags()
	f.BoolVar(&errored, "errored", false, "retry the evals that errored (with --failed: both; neither: both)")
	f.BoolVar(&failed, "failed", false, "retry the evals graded failed")
	f.StringVar(&file, "file", "", "the run's suite (JSON Lines, as submitted): the specs of evals whose Asynq task is gone")
	f.BoolVar(&wait, "wait", false, "follow the run to its end, print its summary, exit 1 under --min-pass-rate")
	f.Float64Var(&minPassRate, "min-pass-rate", 1, "with --wait: the least pass rate that passes the run (default: every eval must pass)")
	return c
}
