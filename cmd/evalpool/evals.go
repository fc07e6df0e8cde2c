package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// errEvalsFailed is returned by a wait whose evals did not all complete.
var errEvalsFailed = errors.New("evals failed")

// errNotFinished is returned by `eval result` for an eval still running.
var errNotFinished = errors.New("eval not finished")

func (a *app) enqueueCommand() *cobra.Command {
	var (
		spec, file string
		count      int
		wait       bool
		timeout    time.Duration
		leaseTTL   time.Duration
		retention  time.Duration
		maxRetry   int
		require    []string
		allowEmpty bool
	)
	c := &cobra.Command{
		Use:   "enqueue (--spec JSON [--count N] | --file evals.jsonl)",
		Short: "Enqueue evals and print their IDs; --wait follows them to the end",
		Long: `Enqueue evals and print their IDs, one per line.

--file reads JSON Lines: one {"eval_id"?: ID, "spec": ANY, "require"?: {k: v}}
object per line (blank lines are skipped). Every line is checked before
anything is enqueued: a malformed line rejects the whole file, naming the line.
An eval whose ID is already enqueued is left as it is and reported.

--require k=v (repeatable) makes every eval run only on executors with all
those labels, on top of a line's own "require". An eval that no registered
executor could serve is refused, and nothing is enqueued; so are evals for a
pool with no executor registered (a misspelt --pool, the wrong Redis or DB),
unless --allow-empty-pool.`,
		Args: positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if (spec == "") == (file == "") {
				return usagef("give exactly one of --spec and --file")
			}
			if count < 1 {
				return usagef("--count must be at least 1, got %d", count)
			}
			if err := checkTimeout(timeout); err != nil {
				return err
			}
			if retention < time.Second {
				return usagef("--retention must be at least 1s, got %s", retention)
			}
			if leaseTTL != 0 && (leaseTTL < 10*time.Millisecond || leaseTTL > tasks.MaxLeaseTTL) {
				return usagef("--lease-ttl must be from 10ms to %s, got %s", tasks.MaxLeaseTTL, leaseTTL)
			}
			var evals []tasks.Eval
			var err error
			if file != "" {
				evals, err = readEvalFile(file)
				for i := range evals {
					if evals[i].ID == "" {
						evals[i].ID = uuid.NewString()
					}
				}
			} else {
				evals, err = specEvals(spec, count)
			}
			if err != nil {
				return err
			}
			if maxRetry < 0 {
				return usagef("--max-retry must be 0 or more, got %d", maxRetry)
			}
			required, err := labels.Parse(require)
			if err != nil {
				return usageError{err}
			}
			opts := evalpool.EnqueueOptions{Eval: retryOptions(maxRetry), AllowEmptyPool: allowEmpty}
			opts.Eval.Retention = retention
			byID := make(map[string]tasks.Eval, len(evals))
			ids := make([]string, len(evals))
			for i := range evals {
				evals[i].TimeoutS = tasks.TimeoutSeconds(timeout)
				evals[i].LeaseTTLMs = leaseTTL.Milliseconds()
				if len(required) > 0 {
					evals[i].Require = maps.Clone(evals[i].Require)
					if evals[i].Require == nil {
						evals[i].Require = map[string]string{}
					}
					maps.Copy(evals[i].Require, required)
				}
				ids[i], byID[evals[i].ID] = evals[i].ID, evals[i]
			}
			ep, err := a.evalpool()
			if err != nil {
				return err
			}
			fresh, err := ep.Enqueue(c.Context(), a.poolName, evals, opts)
			for i, isNew := range fresh {
				if !isNew {
					fmt.Fprintf(a.stderr, "eval %s is already enqueued; left as it is\n", ids[i])
				}
				fmt.Fprintln(a.stdout, ids[i])
			}
			if err != nil {
				return a.unservable(err)
			}
			if !wait {
				return nil
			}
			return a.waitEvals(c.Context(), ids, func(ctx context.Context, id string) error {
				fresh, err := ep.Enqueue(ctx, a.poolName, []tasks.Eval{byID[id]}, evalpool.EnqueueOptions{Eval: opts.Eval, AllowEmptyPool: true})
				if err == nil && fresh[0] {
					fmt.Fprintf(a.stderr, "\neval %s vanished from Redis (its data went back, or was lost): enqueued again\n", id)
				}
				return err
			})
		},
	}
	f := c.Flags()
	f.StringVar(&spec, "spec", "", "the eval's spec: any JSON the executor understands")
	f.StringVar(&file, "file", "", "JSON Lines file of evals ({\"eval_id\"?, \"spec\"} per line)")
	f.IntVar(&count, "count", 1, "with --spec: how many evals to enqueue")
	f.BoolVar(&wait, "wait", false, "wait for every eval to finish, with a progress bar; exit 1 if any failed its grading or errored")
	f.DurationVar(&timeout, "timeout", tasks.DefaultTimeout, "time limit of one attempt (whole seconds)")
	f.DurationVar(&retention, "retention", tasks.ResultRetention, "how long each eval's task and result are kept once it ended (its ID stays taken)")
	f.DurationVar(&leaseTTL, "lease-ttl", 0, "executor lease TTL; 0 uses the worker's --lease-ttl")
	f.IntVar(&maxRetry, "max-retry", tasks.DefaultMaxRetry, "retries of a failed attempt (0 for none)")
	f.StringArrayVar(&require, "require", nil, "run only on executors with label key=value (repeatable)")
	f.BoolVar(&allowEmpty, "allow-empty-pool", false, "enqueue even if no executor is registered in the pool yet")
	return c
}

// checkTimeout refuses a --timeout that is not whole seconds, at least
// one: an attempt's time limit is kept in whole seconds, and one rounded up
// would not be the limit asked for.
func checkTimeout(d time.Duration) error {
	if d < time.Second || d%time.Second != 0 {
		return usagef("--timeout is whole seconds, at least 1s (90s, 2m), got %s", d)
	}
	return nil
}

// retryOptions are the eval options of --max-retry, which counts retries
// as a user does: 0 is none, which EvalOptions spells negative (its 0 is
// the default).
func retryOptions(maxRetry int) tasks.EvalOptions {
	if maxRetry == 0 {
		return tasks.EvalOptions{MaxRetry: -1}
	}
	return tasks.EvalOptions{MaxRetry: maxRetry}
}

// unservable says, of a submission refused for want of executors, where
// the command looked and what to do.
func (a *app) unservable(err error) error {
	switch {
	case errors.Is(err, pool.ErrEmpty):
		return fmt.Errorf("%w in pool %s on Redis %s (a misspelt --pool, or the wrong Redis or DB?): nothing was enqueued; `evalpool pool status` lists a pool's executors, --allow-empty-pool submits anyway", pool.ErrEmpty, a.poolName, a.conn)
	case errors.Is(err, pool.ErrUnservable):
		return fmt.Errorf("%w (pool status lists them; pool add --label or pool label gives them): nothing was enqueued", err)
	}
	return err
}

func specEvals(spec string, count int) ([]tasks.Eval, error) {
	if err := tasks.CheckUTF8([]byte(spec)); err != nil {
		return nil, fmt.Errorf("--spec is not valid UTF-8: %w", err)
	}
	if !json.Valid([]byte(spec)) {
		return nil, fmt.Errorf("%w: --spec is not valid JSON", tasks.ErrBadPayload)
	}
	evals := make([]tasks.Eval, count)
	for i := range evals {
		evals[i] = tasks.Eval{ID: uuid.NewString(), Spec: json.RawMessage(spec)}
	}
	return evals, nil
}

// readEvalFile reads a JSON Lines file of evals, all or nothing. An eval
// whose line names no ID has none. A line that is not UTF-8 is refused
// before it is decoded (tasks.CheckUTF8).
func readEvalFile(path string) ([]tasks.Eval, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var evals []tasks.Eval
	seen := map[string]int{}
	r := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if err := tasks.CheckUTF8(line); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			var e struct {
				ID      string            `json:"eval_id"`
				Spec    json.RawMessage   `json:"spec"`
				Require map[string]string `json:"require"`
				Group   string            `json:"group"`
			}
			dec := json.NewDecoder(bytes.NewReader(trimmed))
			dec.DisallowUnknownFields()
			if derr := dec.Decode(&e); derr != nil || dec.More() {
				if derr == nil {
					derr = errors.New("trailing data after the object")
				}
				return nil, fmt.Errorf("%s:%d: %w: want {\"eval_id\"?, \"spec\", \"require\"?, \"group\"?}: %w", path, n, tasks.ErrBadPayload, derr)
			}
			if len(e.Spec) == 0 || string(e.Spec) == "null" {
				return nil, fmt.Errorf("%s:%d: %w: \"spec\" is missing", path, n, tasks.ErrBadPayload)
			}
			if prev, dup := seen[e.ID]; dup && e.ID != "" {
				return nil, fmt.Errorf("%s:%d: %w: eval ID %q already used on line %d", path, n, tasks.ErrBadPayload, e.ID, prev)
			}
			if e.ID != "" {
				seen[e.ID] = n
			}
			evals = append(evals, tasks.Eval{ID: e.ID, Spec: e.Spec, Require: e.Require, Group: e.Group})
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	if len(evals) == 0 {
		return nil, fmt.Errorf("%s: %w: no evals in the file", path, tasks.ErrBadPayload)
	}
	return evals, nil
}

func (a *app) evalCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "eval",
		Short: "Look at evals by ID",
		Args:  cobra.ArbitraryArgs,
		RunE:  group,
	}
	var asJSON bool
	status := &cobra.Command{
		Use:   "status ID...",
		Short: "Show each eval's state (its outcome once it ended), retries and why it failed",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, ids []string) error {
			evals, err := a.showEvals(c.Context(), ids)
			if err != nil {
				return err
			}
			if asJSON {
				return a.printJSON(evals)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "EVAL\tSTATE\tRETRIED\tREASON")
			for _, d := range evals {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", d.EvalID, cmp.Or(d.Outcome, d.State), d.Retried, d.Reason)
			}
			return w.Flush()
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON on stdout")
	var showJSON bool
	show := &cobra.Command{
		Use:   "show ID...",
		Short: "Show each eval whole: its spec, and each attempt that can be told with its executor, times, outcome, output and the ends of its stdout and stderr",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, ids []string) error {
			evals, err := a.showEvals(c.Context(), ids)
			if err != nil {
				return err
			}
			if showJSON {
				if len(evals) == 1 {
					return a.printJSON(evals[0])
				}
				return a.printJSON(evals)
			}
			for _, d := range evals {
				printDetail(a.stdout, d)
			}
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON on stdout: one object for one ID, a list for more")
	result := &cobra.Command{
		Use:   "result ID...",
		Short: "Print each finished eval's result (JSON); exit 1 if one failed its grading or errored, 3 if one is not finished",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, ids []string) error {
			var failed, unfinished []string
			evals, err := a.showEvals(c.Context(), ids)
			if err != nil {
				return err
			}
			for _, info := range evals {
				id := info.EvalID
				switch info.State {
				case asynq.TaskStateCompleted.String():
					fmt.Fprintln(a.stdout, string(info.Result))
					var r tasks.EvalResult
					if json.Unmarshal(info.Result, &r) == nil && r.Status == executor.StatusFailed {
						failed = append(failed, id)
					}
				case asynq.TaskStateArchived.String():
					failed = append(failed, id)
					fmt.Fprintf(a.stderr, "eval %s failed after %d retries: %s\n", id, info.Retried, info.LastError)
				default:
					unfinished = append(unfinished, id)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("%w: %d of %d", errEvalsFailed, len(failed), len(ids))
			}
			if len(unfinished) > 0 {
				return fmt.Errorf("%w: %s", errNotFinished, strings.Join(unfinished, ", "))
			}
			return nil
		},
	}
	wait := &cobra.Command{
		Use:   "wait ID...",
		Short: "Wait for evals to finish, with a progress bar; exit 1 if any failed its grading or errored",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, ids []string) error {
			return a.waitEvals(c.Context(), ids, nil)
		},
	}
	cancel := &cobra.Command{
		Use:   "cancel ID...",
		Short: "Cancel evals: pending ones never run, running ones stop at the executor and release it",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, ids []string) error {
			return a.cancel(c.Context(), ids)
		},
	}
	c.AddCommand(status, show, result, wait, cancel)
	return c
}

// showEvals reads evals of the pool, as `eval show` shows them.
func (a *app) showEvals(ctx context.Context, ids []string) ([]client.Detail, error) {
	ep, err := a.evalpool()
	if err != nil {
		return nil, err
	}
	evals := make([]client.Detail, 0, len(ids))
	for _, id := range ids {
		d, err := ep.Eval(ctx, a.poolName, id)
		if err != nil {
			return nil, err
		}
		evals = append(evals, d)
	}
	return evals, nil
}

// printDetail prints an eval as `eval show` does.
func printDetail(w io.Writer, d client.Detail) {
	fmt.Fprintf(w, "eval %s (pool %s)\n", d.EvalID, cmp.Or(d.Pool, tasks.DefaultPool))
	if d.Run != "" {
		fmt.Fprintf(w, "  run %s, key %s", d.Run, d.Key)
		if d.Epoch > 0 {
			fmt.Fprintf(w, ", epoch %d", d.Epoch)
		}
		fmt.Fprintln(w)
	}
	if d.Group != "" {
		fmt.Fprintf(w, "  group %s\n", d.Group)
	}
	fmt.Fprintf(w, "  state %s", d.State)
	if d.Outcome != "" {
		fmt.Fprintf(w, ", %s", d.Outcome)
	}
	fmt.Fprintf(w, "; %d retries of at most %d; timeout %ds\n", d.Retried, d.MaxRetry, d.TimeoutS)
	if d.Reason != "" {
		fmt.Fprintf(w, "  reason %s\n", d.Reason)
	}
	fmt.Fprintf(w, "  spec %s\n", compactJSON(d.Spec))
	if len(d.Require) > 0 {
		fmt.Fprintf(w, "  require %s\n", labels.Name(d.Require))
	}
	for _, at := range d.Attempts {
		fmt.Fprintf(w, "  attempt %d: %s", at.Attempt, at.Outcome)
		if at.Executor != "" {
			fmt.Fprintf(w, " on %s", at.Executor)
		}
		if at.Started != nil {
			fmt.Fprintf(w, ", started %s", at.Started.UTC().Format(time.RFC3339Nano))
		}
		if at.Ended != nil {
			fmt.Fprintf(w, ", ended %s", at.Ended.UTC().Format(time.RFC3339Nano))
		}
		if at.Duration > 0 {
			fmt.Fprintf(w, ", took %.3fs", at.Duration)
		}
		fmt.Fprintln(w)
		if at.Error != "" {
			fmt.Fprintf(w, "    error %s\n", at.Error)
		}
		if at.ExitCode != nil {
			fmt.Fprintf(w, "    exit code %d\n", *at.ExitCode)
		}
		if at.Score != nil {
			fmt.Fprintf(w, "    score %g\n", *at.Score)
		}
		for _, name := range slices.Sorted(maps.Keys(at.Metrics)) {
			fmt.Fprintf(w, "    %s %g\n", name, at.Metrics[name])
		}
		if len(at.Output) > 0 {
			fmt.Fprintf(w, "    output %s\n", compactJSON(at.Output))
		}
		printTail(w, "stdout", at.Stdout)
		printTail(w, "stderr", at.Stderr)
	}
}

// printTail prints the end of a grader's stream, each line indented.
func printTail(w io.Writer, name, tail string) {
	if tail == "" {
		return
	}
	fmt.Fprintf(w, "    %s ends:\n", name)
	for _, line := range strings.Split(strings.TrimRight(tail, "\n"), "\n") {
		fmt.Fprintf(w, "      | %s\n", line)
	}
}

// waitEvals polls the evals until each is completed or archived, showing a
// progress bar on stderr, and fails if any was archived. With requeue (the
// producer's own evals), an eval that vanished is enqueued again. A Redis
// that fails is waited for (backoff).
func (a *app) waitEvals(ctx context.Context, ids []string, requeue func(context.Context, string) error) error {
	ep, err := a.evalpool()
	if err != nil {
		return err
	}
	bar := a.newProgress(len(ids), "evals")
	bar.Set(0)
	var passed, failed, archived int
	err = ep.Wait(ctx, a.poolName, ids, client.WaitOptions{
		Finished: func(f client.Finished) {
			bar.Set(passed + failed + archived + 1)
			switch f.Outcome {
			case client.OutcomePassed:
				passed++
			case client.OutcomeFailed:
				failed++
			default:
				archived++
			}
		},
		Requeue: requeue,
		Backoff: a.backoff("the evals"),
	})
	if err != nil && ctx.Err() != nil {
		fmt.Fprintf(a.stderr, "\nstopped waiting; the evals go on in the queue: wait again with `evalpool eval wait ID...` (the IDs enqueue printed), or look with `evalpool eval status ID...`\n")
		return fmt.Errorf("%w: %w", errInterrupted, err)
	}
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	bar.Finish()
	fmt.Fprintf(a.stderr, "%d evals: %d passed, %d failed, %d errored (archived)\n", len(ids), passed, failed, archived)
	if failed+archived > 0 {
		return fmt.Errorf("%w: %d failed and %d errored of %d; see `evalpool eval result`", errEvalsFailed, failed, archived, len(ids))
	}
	return nil
}

// backoff rides out a Redis that fails a wait, for as long as it takes:
// the evals go on, and a CI gate must not fail on an outage the workers
// survive. It says so once when Redis begins to fail, and once when it is
// back; Ctrl-C still stops the wait.
func (a *app) backoff(what string) *client.Backoff {
	return &client.Backoff{
		Failing: func(err error) {
			fmt.Fprintf(a.stderr, "\nRedis fails (%v): the wait for %s goes on, trying again until Redis answers\n", err, what)
		},
		Back: func(down time.Duration) {
			fmt.Fprintf(a.stderr, "\nRedis is back after %s: the wait for %s goes on\n", down.Round(100*time.Millisecond), what)
		},
	}
}
