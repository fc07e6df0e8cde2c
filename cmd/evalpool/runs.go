package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/pool"
	evalrun "github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

func (a *app) runCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "run",
		Short: "Submit suites of evals as named runs; follow, sum up, compare and cancel them",
		Args:  cobra.ArbitraryArgs,
		RunE:  group,
	}
	c.AddCommand(a.runSubmit(), a.runList(), a.runStatus(), a.runSummary(), a.runResults(), a.runCancel(), a.runRetry())
	return c
}

func (a *app) runs() (*evalrun.Store, error) {
	c, err := a.evalpool()
	if err != nil {
		return nil, err
	}
	return c.Runs(), nil
}

func (a *app) runSubmit() *cobra.Command {
	var (
		file, name  string
		require     []string
		wait        bool
		minPassRate float64
		timeout     time.Duration
		maxRetry    int
		resume      bool
		retention   time.Duration
		taskKeep    time.Duration
		allowEmpty  bool
		meta        []string
		epochs      int
		share       client.RunRequest // Weight, MaxExecutors, Priority
	)
	c := &cobra.Command{
		Use:   "submit --file suite.jsonl [--name N] [--wait]",
		Short: "Submit a suite of evals as one run; --wait follows it and gates on its pass rate",
		Long: `Submit the evals of a JSON Lines file ({"eval_id"?, "spec", "require"?,
"group"?} per line) as one run and print its name. An eval's "eval_id" is its
key in the run, which --compare matches across runs (the line number when
absent); its eval ID is NAME/KEY. "group" names the subset of the suite it is
in: the summary gives each group its pass rate and metric means. Every line,
and that some executor can serve every eval, is checked before anything is
enqueued: a pool with no executor registered (a misspelt --pool, the wrong
Redis or DB) is refused unless --allow-empty-pool.

--epochs k runs each eval k times, as the evals KEY#1 … KEY#k, and the summary
gives pass@1 and pass@k. --meta key=value says what the run is of (model,
commit, seed, dataset): the summary and exports show it.

The pool is shared fairly between the runs in flight: each gets executors in
proportion to --weight (default 1), never more than --max-executors (0: no
cap); a --priority high run is served before the normal ones, and a normal
run left with nothing running for 30s still gets one eval at a time.

--wait follows the run with a progress bar, prints its summary, and exits 1
when its pass rate (passed over passed, failed and errored) is under
--min-pass-rate; by default any failed or errored eval fails the run.`,
		Args: positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("--file is required")
			}
			if name != "" {
				if err := evalrun.ValidateName(name); err != nil {
					return usageError{err}
				}
			}
			if minPassRate > 1 {
				return usagef("--min-pass-rate is a share from 0 to 1, got %g", minPassRate)
			}
			if err := checkTimeout(timeout); err != nil {
				return err
			}
			if maxRetry < 0 {
				return usagef("--max-retry must be 0 or more, got %d", maxRetry)
			}
			if retention < time.Second || taskKeep < time.Second {
				return usagef("--retention and --task-retention must be at least 1s, got %s and %s", retention, taskKeep)
			}
			required, err := labels.Parse(require)
			if err != nil {
				return usageError{err}
			}
			runMeta, err := parseMeta(meta)
			if err != nil {
				return usageError{err}
			}
			if epochs < 1 || epochs > evalrun.MaxEpochs {
				return usagef("--epochs must be from 1 to %d, got %d", evalrun.MaxEpochs, epochs)
			}
			if share.Weight < 1 || share.Weight > evalrun.MaxWeight || share.MaxExecutors < 0 || share.Priority != evalrun.PriorityNormal && share.Priority != evalrun.PriorityHigh {
				return usagef("--weight must be from 1 to %d, --max-executors 0 (no cap) or more, --priority normal or high; got %d, %d, %q", evalrun.MaxWeight, share.Weight, share.MaxExecutors, share.Priority)
			}
			evals, err := readEvalFile(file)
			if err != nil {
				return err
			}
			ep, err := a.evalpool()
			if err != nil {
				return err
			}
			p, err := a.pool()
			if err != nil {
				return err
			}
			opts := retryOptions(maxRetry)
			opts.Retention = taskKeep
			req := client.RunRequest{
				Name: name, Evals: evals, Require: required, Timeout: timeout,
				Options: opts, Resume: resume, Retention: retention, AllowEmptyPool: allowEmpty,
				Meta: runMeta, Epochs: epochs, Weight: share.Weight, MaxExecutors: share.MaxExecutors, Priority: share.Priority,
			}
			r, err := ep.SubmitRun(c.Context(), a.poolName, req)
			if err != nil {
				return a.unservable(err)
			}
			name = r.Name
			fmt.Fprintln(a.stdout, name)
			if !wait {
				return nil
			}
			// The run was taken: enqueued again after a rewind, its evals
			// wait for executors as they did.
			req.Name, req.Resume, req.AllowEmptyPool = name, true, true
			return a.waitRun(c.Context(), ep.Runs(), name, minPassRate, &rewinds{
				watch: client.RewindWatch{Pool: p},
				resubmit: func(ctx context.Context) error {
					_, err := ep.SubmitRun(ctx, a.poolName, req)
					return err
				},
			})
		},
	}
	f := c.Flags()
	f.StringVar(&file, "file", "", "JSON Lines file of evals ({\"eval_id\"?, \"spec\", \"require\"?, \"group\"?} per line)")
	f.StringVar(&name, "name", "", "the run's name (default run-YYYYMMDD-HHMMSS)")
	f.StringArrayVar(&require, "require", nil, "run every eval only on executors with label key=value (repeatable)")
	f.BoolVar(&wait, "wait", false, "follow the run to its end, print its summary, exit 1 under --min-pass-rate")
	f.Float64Var(&minPassRate, "min-pass-rate", 1, "with --wait: the least pass rate that passes the run (default: every eval must pass)")
	f.DurationVar(&timeout, "timeout", tasks.DefaultTimeout, "time limit of one attempt (whole seconds)")
	f.IntVar(&maxRetry, "max-retry", tasks.DefaultMaxRetry, "retries of a failed attempt (0 for none)")
	f.DurationVar(&retention, "retention", evalrun.DefaultRetention, "how long the run, its evals' ends and results, is kept after its last eval ended")
	f.DurationVar(&taskKeep, "task-retention", tasks.RunTaskRetention, "how long each eval's Asynq task is kept once it ended (the run keeps its result)")
	f.StringArrayVar(&meta, "meta", nil, "what the run is of, key=value (model=…, commit=…; repeatable): shown in its summary and exports")
	f.IntVar(&epochs, "epochs", 1, "run each eval this many times (KEY#1 … KEY#k), for pass@1 and pass@k")
	f.IntVar(&share.Weight, "weight", 1, "the run's share of the pool against the other runs in flight")
	f.IntVar(&share.MaxExecutors, "max-executors", 0, "the most executors the run holds at once; 0 for no cap")
	f.StringVar(&share.Priority, "priority", evalrun.PriorityNormal, "normal, or high: served before the normal runs")
	f.BoolVar(&allowEmpty, "allow-empty-pool", false, "submit even if no executor is registered in the pool yet")
	f.BoolVar(&resume, "resume", false, "finish the submission of run --name that was cut short: the same file, --epochs and --meta; evals enqueued already are left alone")
	return c
}

// rewinds lets the submitter of a run, which holds its evals, enqueue them
// again when Redis's data goes back under it, so that a rewind costs time,
// not evals.
type rewinds struct {
	watch    client.RewindWatch
	resubmit func(context.Context) error
	// owed is a rewind seen whose evals are not enqueued again yet: the
	// watch reports it once.
	owed bool
}

// waitRun follows a run until every eval ended, then prints its summary
// and fails under minPassRate. A run that vanished, or a pool whose data
// went back, has its evals enqueued again (rw); a Redis that fails is
// waited for, however long (backoff).
func (a *app) waitRun(ctx context.Context, store *evalrun.Store, name string, minPassRate float64, rw *rewinds) error {
	b := a.backoff("run " + name)
	var c evalrun.Counts
	err := b.Do(ctx, func() error {
		if _, err := rw.watch.Rewound(ctx); err != nil { // the first look
			return err
		}
		var err error
		c, err = store.Progress(ctx, name)
		return err
	})
	if err != nil {
		return err
	}
	bar := a.newProgress(c.Size, name)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for c.Done() < c.Size {
		select {
		case <-ctx.Done():
			fmt.Fprintf(a.stderr, "\nstopped waiting; the evals of run %s go on (%d of %d ended): follow it with `evalpool run status %s`, sum it up with `evalpool run summary %s`\n", name, c.Done(), c.Size, name, name)
			return fmt.Errorf("%w: wait for run %s: %w", errInterrupted, name, context.Cause(ctx))
		case <-tick.C:
		}
		err := b.Do(ctx, func() error {
			next, err := a.progress(ctx, store, name, rw)
			if err == nil {
				c = next
			}
			return err
		})
		if err != nil && ctx.Err() == nil {
			return err
		}
		bar.Set(c.Done())
	}
	bar.Finish()
	var sum evalrun.Summary
	if err := b.Do(ctx, func() error {
		var err error
		sum, err = store.Summarize(ctx, name, "")
		return err
	}); err != nil {
		return err
	}
	printSummary(a.stdout, sum)
	return gate(sum, minPassRate)
}

// progress reads a run's progress, once it has enqueued the run's evals
// again if the pool's data went back or the run vanished.
func (a *app) progress(ctx context.Context, store *evalrun.Store, name string, rw *rewinds) (evalrun.Counts, error) {
	back, err := rw.watch.Rewound(ctx)
	if err != nil {
		return evalrun.Counts{}, err
	}
	c, err := store.Progress(ctx, name)
	if back || errors.Is(err, evalrun.ErrNotFound) {
		fmt.Fprintf(a.stderr, "\nRedis's data went back in time, or run %s vanished: its evals are enqueued again by their IDs (those still there are left alone)\n", name)
		rw.owed = true
	}
	if rw.owed {
		if err := rw.resubmit(ctx); err != nil {
			return evalrun.Counts{}, err
		}
		rw.owed = false
		c, err = store.Progress(ctx, name)
	}
	return c, err
}

// printIncomplete says, of a run whose submission was cut short, how many
// evals were enqueued and how to finish it.
func printIncomplete(w io.Writer, name, state string, enqueued, size int) {
	if state != evalrun.Incomplete {
		return
	}
	n := "an unknown number"
	if enqueued >= 0 {
		n = strconv.Itoa(enqueued)
	}
	fmt.Fprintf(w, "  submission incomplete: %s of %d evals enqueued (unless its submit still runs); finish it with `run submit --resume --name %s` and the same file, or end it with `run cancel %s`\n", n, size, name, name)
}

func (a *app) runList() *cobra.Command {
	var limit int
	c := &cobra.Command{
		Use:   "list",
		Short: "List runs, newest first",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			store, err := a.runs()
			if err != nil {
				return err
			}
			runs, err := store.List(c.Context(), limit)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "RUN\tPOOL\tSUBMITTED\tEVALS\tENDED\tPASS RATE")
			for _, r := range runs {
				p, err := store.Progress(c.Context(), r.Name)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", r.Name, r.Pool, r.CreatedAt.UTC().Format(time.RFC3339), r.Size, p.Done(), passRate(p))
			}
			return w.Flush()
		},
	}
	c.Flags().IntVar(&limit, "limit", 50, "how many runs")
	return c
}

func passRate(c evalrun.Counts) string {
	if n := c.Passed + c.Failed + c.Errored; n > 0 {
		return fmt.Sprintf("%.1f%%", 100*float64(c.Passed)/float64(n))
	}
	return "-"
}

func (a *app) runStatus() *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "A run's progress: counts by status (O(1), for polling)",
		Args:  positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			store, err := a.runs()
			if err != nil {
				return err
			}
			p, err := store.Progress(c.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "run %s: %d of %d ended: passed %d, failed %d, errored %d, cancelled %d, running %d, pending %d; pass rate %s\n",
				args[0], p.Done(), p.Size, p.Passed, p.Failed, p.Errored, p.Cancelled, p.Running, p.Pending, passRate(p))
			sh, err := store.Share(c.Context(), args[0])
			if err != nil {
				return err
			}
			limit := "no cap"
			if sh.MaxExecutors > 0 {
				limit = fmt.Sprintf("at most %d executors", sh.MaxExecutors)
			}
			fmt.Fprintf(a.stdout, "share: weight %d, %s, priority %s; %d executors held now, %.1f on average over the last minute; %d evals in flight, %d waiting for admission\n",
				sh.Weight, limit, sh.Priority, p.Running, sh.HeldLastMinute, sh.InFlight, sh.Queued)
			state, enqueued, err := store.Submission(c.Context(), args[0])
			if err != nil {
				return err
			}
			printIncomplete(a.stdout, args[0], state, enqueued, p.Size)
			return nil
		},
	}
}

func (a *app) runCancel() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel NAME",
		Short: "Cancel a run's evals that have not ended: pending ones never run, running ones stop, those a cut-short submission never enqueued end cancelled",
		Args:  positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			ep, err := a.evalpool()
			if err != nil {
				return err
			}
			n, err := ep.CancelRun(c.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "cancelled %d pending and %d running evals; %d had ended, %d unknown\n", n.Pending, n.Running, n.Ended, n.Unknown)
			return nil
		},
	}
}

// runPool is the pool of the run name: commands on a run act on its pool,
// whatever --pool says.
func (a *app) runPool(ctx context.Context, name string) (*pool.Pool, error) {
	store, err := a.runs()
	if err != nil {
		return nil, err
	}
	r, err := store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	a.poolName = r.Pool
	return a.pool()
}

// cancel cancels evals by ID and says what it did.
func (a *app) cancel(ctx context.Context, ids []string) error {
	ep, err := a.evalpool()
	if err != nil {
		return err
	}
	n, err := ep.Cancel(ctx, a.poolName, ids)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "cancelled %d pending and %d running evals; %d had ended, %d unknown\n", n.Pending, n.Running, n.Ended, n.Unknown)
	return nil
}

// parseMeta reads --meta key=value flags; a key given twice is refused.
func parseMeta(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	meta := make(map[string]string, len(flags))
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("--meta %q: want key=value", f)
		}
		if _, dup := meta[k]; dup {
			return nil, fmt.Errorf("--meta %s given twice", k)
		}
		meta[k] = v
	}
	return meta, evalrun.CheckMeta(meta)
}
