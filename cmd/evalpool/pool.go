package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

func (a *app) poolCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "pool",
		Short: "Manage the executor pool",
		Args:  cobra.ArbitraryArgs,
		RunE:  group,
	}
	c.AddCommand(a.poolAdd(), a.poolRemove(), a.poolLabel(), a.poolQuarantine(), a.poolReleaseQuarantine(),
		a.poolStatus(), a.poolCheck(), a.poolConfig(), a.poolReap(), a.poolAcquire(), a.poolRelease())
	return c
}

func (a *app) poolAdd() *cobra.Command {
	var (
		labelArgs []string
		noProbe   bool
	)
	c := &cobra.Command{
		Use:   "add URL...",
		Short: "Register executors (idempotent); a bad or silent URL registers none",
		Long: `Register executors under their canonical URLs. Each is first asked for its
health (GET /healthz) and its instance ID, so that an executor that does not
answer, or that is already in the pool under another URL, is refused. With
--no-probe, URLs are registered without asking (and without the instance
check).

--label gives every executor added these labels (at most 4); evals that
require labels run only on executors that have them all. A known executor
added with other labels is relabeled (and says so); added with none, it
keeps its own. "pool label" changes labels later.`,
		Args: positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			lm, err := labels.Parse(labelArgs)
			if err != nil {
				return usageError{err}
			}
			execs := make([]pool.Executor, len(args))
			for i, raw := range args {
				u, err := pool.ParseURL(raw)
				if err != nil {
					return err
				}
				execs[i] = pool.Executor{URL: u, Labels: lm}
			}
			found := map[string]string{}
			if !noProbe {
				if found, err = probe(c.Context(), execs); err != nil {
					return err
				}
			}
			p, err := a.pool()
			if err != nil {
				return err
			}
			regs, err := p.Register(c.Context(), execs...)
			if err != nil {
				return err
			}
			var dups []string
			for _, r := range regs {
				if r.Outcome == pool.Duplicate {
					fmt.Fprintf(a.stdout, "%s %s (registered as %s in pool %s)\n", r.Outcome, r.URL, r.DuplicateOf, r.DuplicatePool)
					dups = append(dups, r.URL)
					continue
				}
				fmt.Fprintf(a.stdout, "%s %s%s\n", r.Outcome, r.URL, found[r.URL])
			}
			if len(dups) > 0 {
				return fmt.Errorf("refused %s: the same executor is already registered under another URL or in another pool", strings.Join(dups, ", "))
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&labelArgs, "label", nil, "label key=value for every executor added (repeatable, at most 4)")
	c.Flags().BoolVar(&noProbe, "no-probe", false, "register without asking the executors for their health and instance ID")
	return c
}

// probe asks every executor for its health and instance ID, all at once,
// and fails naming the first that does not answer. It returns what each
// said, to print beside its URL.
func probe(ctx context.Context, execs []pool.Executor) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	errs := make([]error, len(execs))
	health := make([]executor.Health, len(execs))
	var wg sync.WaitGroup
	for i := range execs {
		wg.Go(func() {
			health[i], errs[i] = (&executor.Client{}).Health(ctx, execs[i].URL)
			execs[i].InstanceID = health[i].InstanceID
		})
	}
	wg.Wait()
	found := map[string]string{}
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("%s did not answer its health check, so nothing was registered (--no-probe registers it anyway): %w", execs[i].URL, err)
		}
		id := health[i].InstanceID
		if id == "" {
			id = "none reported"
		}
		found[execs[i].URL] = fmt.Sprintf(" (healthy: %s, instance %s)", cmp.Or(health[i].Status, "ok"), id)
	}
	return found, nil
}

func (a *app) poolLabel() *cobra.Command {
	var clear bool
	c := &cobra.Command{
		Use:   "label URL key=value...",
		Short: "Replace an executor's labels (--clear for none)",
		Long: `Replace an executor's labels with those given (at most 4). An available
executor serves its new label sets at once; a leased one from its release.`,
		Args: positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if clear != (len(args) == 1) {
				return usagef("give labels, or --clear for none")
			}
			lm, err := labels.Parse(args[1:])
			if err != nil {
				return usageError{err}
			}
			u, err := pool.ParseURL(args[0])
			if err != nil {
				return err
			}
			p, err := a.pool()
			if err != nil {
				return err
			}
			out, err := p.Relabel(c.Context(), u, lm)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s %s %s\n", out, u, cmp.Or(labels.Name(lm), "(no labels)"))
			return nil
		},
	}
	c.Flags().BoolVar(&clear, "clear", false, "remove every label")
	return c
}

func (a *app) poolQuarantine() *cobra.Command {
	var reason string
	c := &cobra.Command{
		Use:   "quarantine URL...",
		Short: "Take executors out of service until release-quarantine returns them",
		Long: `Take executors out of service: never handed out until "pool
release-quarantine" returns them (health probes return only the executors the
pool quarantined for failing their calls). A leased executor finishes its
eval first. Every URL is checked before any is quarantined.`,
		Args: positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			return a.eachExecutor(c.Context(), args, func(ctx context.Context, p *pool.Pool, u string) (string, error) {
				out, err := p.Quarantine(ctx, u, reason)
				return string(out), err
			})
		},
	}
	c.Flags().StringVar(&reason, "reason", pool.ReasonOperator, "why, as status and the logs will show it")
	return c
}

func (a *app) poolReleaseQuarantine() *cobra.Command {
	return &cobra.Command{
		Use:   "release-quarantine URL...",
		Short: "Return quarantined executors to service now, without a probe",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			return a.eachExecutor(c.Context(), args, func(ctx context.Context, p *pool.Pool, u string) (string, error) {
				out, err := p.ReturnToService(ctx, u)
				return string(out), err
			})
		},
	}
}

// eachExecutor checks every URL, and that each is registered, then runs op
// on each in turn and prints its outcome: a bad or unknown URL changes
// nothing.
func (a *app) eachExecutor(ctx context.Context, args []string, op func(context.Context, *pool.Pool, string) (string, error)) error {
	urls := make([]string, len(args))
	for i, raw := range args {
		u, err := pool.ParseURL(raw)
		if err != nil {
			return err
		}
		urls[i] = u
	}
	p, err := a.pool()
	if err != nil {
		return err
	}
	unknown, err := p.Unregistered(ctx, urls...)
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: %s, so nothing was changed", pool.ErrUnknownExecutor, strings.Join(unknown, ", "))
	}
	for _, u := range urls {
		out, err := op(ctx, p, u)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s %s\n", out, u)
	}
	return nil
}

func (a *app) poolRemove() *cobra.Command {
	return &cobra.Command{
		Use:   "remove URL...",
		Short: "Deregister executors; a leased one drains and leaves at its release",
		Args:  positional(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			return a.eachExecutor(c.Context(), args, func(ctx context.Context, p *pool.Pool, u string) (string, error) {
				out, err := p.Deregister(ctx, u)
				return string(out), err
			})
		},
	}
}

func (a *app) poolStatus() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "Show every executor: state, lease, last release",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			p, err := a.pool()
			if err != nil {
				return err
			}
			st, err := p.Status(c.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return a.printJSON(st)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "EXECUTOR\tSTATE\tLABELS\tHEALTH\tPASS RATE\tEVAL\tFENCE\tLEASE AGE\tDEADLINE IN\tIDLE SINCE")
			for _, e := range st.Executors {
				eval, fence, age, left, idle := "-", "-", "-", "-", "-"
				if l := e.Lease; l != nil {
					eval, fence = l.EvalID, fmt.Sprint(l.Fence)
					age = st.Now.Sub(l.AcquiredAt).Round(time.Millisecond).String()
					left = l.Deadline.Sub(st.Now).Round(time.Millisecond).String()
				} else if !e.LastRelease.IsZero() && e.Quarantine == nil {
					idle = st.Now.Sub(e.LastRelease).Round(time.Second).String()
				}
				health := "ok"
				switch {
				case e.Quarantine != nil:
					health = fmt.Sprintf("quarantined (%s) %s ago, probe in %s", e.Quarantine.Reason,
						st.Now.Sub(e.Quarantine.Since).Round(time.Second), max(0, e.Quarantine.NextProbe.Sub(st.Now)).Round(time.Second))
				case e.Fails > 0:
					health = fmt.Sprintf("%d failed calls in a row", e.Fails)
				}
				rate := "-"
				if r := e.PassRate(); r >= 0 {
					rate = fmt.Sprintf("%.0f%% of %d", 100*r, e.Passed+e.Failed)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.URL, e.State, cmp.Or(labels.Name(e.Labels), "-"), health, rate, eval, fence, age, left, idle)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if len(st.Waiters) > 0 {
				// Waiting evals are "active" in Asynq, like running ones:
				// this is where to tell them apart.
				fmt.Fprintln(w, "\nWAITING EVAL\tPOSITION\tWAITING FOR")
				for _, wt := range st.Waiters {
					fmt.Fprintf(w, "%s\t%d\t%s\n", wt.EvalID, wt.Position, st.Now.Sub(wt.Since).Round(time.Millisecond))
				}
				if err := w.Flush(); err != nil {
					return err
				}
			}
			fmt.Fprintf(a.stdout, "pool %s: %d executors, %d available, %d leased, %d expired, %d draining, %d quarantined; %d evals waiting\n",
				st.Pool, len(st.Executors), st.Counts[pool.StateAvailable], st.Counts[pool.StateLeased],
				st.Counts[pool.StateExpired], st.Counts[pool.StateDraining], st.Counts[pool.StateQuarantined], len(st.Waiters))
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON on stdout")
	return c
}

func (a *app) poolCheck() *cobra.Command {
	var repair bool
	c := &cobra.Command{
		Use:   "check",
		Short: "Verify the pool's invariants; exit 3 on any violation",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			p, err := a.pool()
			if err != nil {
				return err
			}
			if repair {
				m, err := p.Rebuild(c.Context())
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "rebuilt the label indexes of %d executors\n", m.Executors)
			}
			vs, err := p.Check(c.Context())
			if err != nil {
				return err
			}
			for _, v := range vs {
				fmt.Fprintln(a.stdout, v)
			}
			if len(vs) > 0 {
				return fmt.Errorf("%w: %d violations in pool %s", errCheckFailed, len(vs), p.Name())
			}
			fmt.Fprintf(a.stdout, "pool %s: ok\n", p.Name())
			return nil
		},
	}
	c.Flags().BoolVar(&repair, "repair", false, "first rebuild the label sets' indexes and counts from the executors' records (after a lost key: invariant 8)")
	return c
}

func (a *app) poolConfig() *cobra.Command {
	var (
		s      pool.Settings
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "config [--lease-grace D] [--quarantine-after N] ...",
		Short: "Show the pool's settings, which every worker applies; flags change them",
		Long: `Show the settings every process using the pool applies: they live with the
pool in Redis, so two workers never disagree about a grace or a threshold.
A flag given changes that setting, from every worker's next call; the others
keep their values.`,
		Args: positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			p, err := a.pool()
			if err != nil {
				return err
			}
			cur, err := p.Settings(c.Context())
			if err != nil {
				return err
			}
			f := c.Flags()
			if f.NFlag() > 0 && !(f.NFlag() == 1 && asJSON) {
				if f.Changed("lease-grace") {
					cur.LeaseGrace = s.LeaseGrace
				}
				if f.Changed("quarantine-after") {
					cur.QuarantineAfter = cmp.Or(s.QuarantineAfter, -1) // the flag's 0 is never
				}
				if f.Changed("quarantine-on-fail-rate") {
					cur.QuarantineFailRate = s.QuarantineFailRate
				}
				if f.Changed("probe-interval") {
					cur.ProbeInterval = s.ProbeInterval
				}
				if f.Changed("probe-max-interval") {
					cur.ProbeMaxInterval = s.ProbeMaxInterval
				} else {
					cur.ProbeMaxInterval = max(cur.ProbeMaxInterval, cur.ProbeInterval) // the longest follows the first up
				}
				if err := p.Configure(c.Context(), cur); err != nil {
					return usageError{err}
				}
				if cur, err = p.Settings(c.Context()); err != nil {
					return err
				}
			}
			if asJSON {
				return a.printJSON(cur)
			}
			never := func(n int) string {
				if n < 0 {
					return "never"
				}
				return fmt.Sprint(n)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "lease-grace\t%s\n", cur.LeaseGrace)
			fmt.Fprintf(w, "quarantine-after\t%s\n", never(cur.QuarantineAfter))
			fmt.Fprintf(w, "quarantine-on-fail-rate\t%g\n", cur.QuarantineFailRate)
			fmt.Fprintf(w, "probe-interval\t%s\n", cur.ProbeInterval)
			fmt.Fprintf(w, "probe-max-interval\t%s\n", cur.ProbeMaxInterval)
			return w.Flush()
		},
	}
	f := c.Flags()
	f.DurationVar(&s.LeaseGrace, "lease-grace", pool.DefaultLeaseGrace, "reclaim an expired lease this long after its deadline: the one-way delay to the executors and their clocks' drift")
	f.IntVar(&s.QuarantineAfter, "quarantine-after", pool.DefaultQuarantine, "quarantine an executor after this many calls in a row it did not serve (refused, timed out, 5xx, junk); 0 never")
	f.Float64Var(&s.QuarantineFailRate, "quarantine-on-fail-rate", 0, "also quarantine an executor when this share of its last 20 graded evals failed (e.g. 0.9); 0 never")
	f.DurationVar(&s.ProbeInterval, "probe-interval", pool.DefaultProbe, "first health probe of a quarantined executor after this long, then doubling; probes run with the reap")
	f.DurationVar(&s.ProbeMaxInterval, "probe-max-interval", pool.DefaultProbeMax, "longest wait between two health probes of a quarantined executor")
	f.BoolVar(&asJSON, "json", false, "print JSON on stdout")
	return c
}

func (a *app) poolReap() *cobra.Command {
	return &cobra.Command{
		Use:   "reap",
		Short: "Reclaim every lease past its deadline",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			p, err := a.pool()
			if err != nil {
				return err
			}
			n, err := p.Reap(c.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "reaped %d\n", n)
			return nil
		},
	}
}

func (a *app) poolAcquire() *cobra.Command {
	var (
		evalID string
		ttl    time.Duration
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "acquire --eval ID",
		Short: "Lease an executor to an eval; exit 3 when none is free",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if evalID == "" {
				return usagef("--eval is required")
			}
			p, err := a.pool()
			if err != nil {
				return err
			}
			l, err := p.Acquire(c.Context(), evalID, ttl, pool.AcquireArgs{})
			if err != nil {
				return err
			}
			if asJSON {
				return a.printJSON(l)
			}
			fmt.Fprintf(a.stdout, "%s token=%s fence=%d deadline=%s\n", l.URL, l.Token, l.Fence, l.Deadline.Format(time.RFC3339Nano))
			return nil
		},
	}
	c.Flags().StringVar(&evalID, "eval", "", "eval ID (required)")
	c.Flags().DurationVar(&ttl, "ttl", tasks.DefaultLeaseTTL, "lease TTL")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON on stdout")
	return c
}

func (a *app) poolRelease() *cobra.Command {
	var (
		token  string
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "release URL --token T",
		Short: "Release a lease; prints the outcome (a double release is not an error)",
		Args:  positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if token == "" {
				return usagef("--token is required")
			}
			u, err := pool.ParseURL(args[0])
			if err != nil {
				return err
			}
			p, err := a.pool()
			if err != nil {
				return err
			}
			r, err := p.Release(c.Context(), pool.Lease{URL: u, Token: token}, pool.ReleaseArgs{Path: "cli"})
			if err != nil {
				return err
			}
			if asJSON {
				return a.printJSON(r)
			}
			fmt.Fprintln(a.stdout, r.Outcome)
			return nil
		},
	}
	c.Flags().StringVar(&token, "token", "", "the lease's token (required)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON on stdout")
	return c
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
