package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/refexec"
)

func (a *app) executorCommand() *cobra.Command {
	var (
		listen string
		count  int
		secret string
		opts   refexec.Options
	)
	c := &cobra.Command{
		Use:   "executor --listen ADDR",
		Short: "Run the reference executor: a command per eval, or simulated work",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			// The secret is never a flag default: cobra would print it in
			// the usage text.
			if secret != "" {
				opts.Secret = []byte(secret)
			} else {
				opts.Secret = executor.SecretFromEnv()
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			if opts.InstanceID == "" {
				// Stable across restarts and the same under every spelling of
				// the address: the host and the port this process serves.
				host, _ := os.Hostname()
				opts.InstanceID = fmt.Sprintf("%s:%d", host, l.Addr().(*net.TCPAddr).Port)
			}
			var (
				serve    func(context.Context, net.Listener) error
				instance = opts.InstanceID // a fleet's prefix
			)
			if count > 1 {
				fleet, err := refexec.NewFleet(count, opts)
				if err != nil {
					_ = l.Close()
					return usageError{err}
				}
				serve = fleet.Serve
			} else {
				opts.Logger = &a.log
				srv, err := refexec.New(opts)
				if err != nil {
					_ = l.Close()
					return usageError{err}
				}
				serve, instance = srv.Serve, srv.InstanceID()
			}
			if len(opts.Secret) == 0 {
				a.log.Warn().Msg("executor has no secret (--executor-secret or " + executor.EnvSecret + "): it accepts evals from anyone who can reach it, and one request with a high fence locks every lease holder out")
			}
			a.log.Info().Str("addr", l.Addr().String()).Int("count", count).Str("instance_id", instance).Bool("auth", len(opts.Secret) > 0).
				Int("max_conns", opts.MaxConns).Str("exec", opts.Exec).Dur("latency", opts.Latency).Float64("fail_rate", opts.FailRate).Msg("executor listening")
			return serve(c.Context(), l)
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9001", "address to listen on")
	f.IntVar(&count, "count", 1, "serve this many executors, executor i at http://ADDR/e/i (for load tests)")
	f.StringVar(&opts.Exec, "exec", "", "shell command run per eval: spec on stdin, JSON result on stdout")
	f.DurationVar(&opts.Latency, "latency", 0, "simulated time per eval (without --exec); a spec field \"sleep_ms\" overrides it for its eval")
	f.Float64Var(&opts.FailRate, "fail-rate", 0, "share of simulated evals that fail with a 500, 0 to 1 (without --exec)")
	f.Float64Var(&opts.GradeFailRate, "grade-fail-rate", 0, "share of simulated evals graded failed, 0 to 1 (without --exec; a spec's \"grade\" overrides it)")
	f.StringVar(&secret, "executor-secret", "", "secret every POST must be signed with (env "+executor.EnvSecret+", which keeps it out of ps); without one, anyone is accepted")
	f.StringVar(&opts.InstanceID, "instance-id", "", "ID reported at /healthz, by which the pool knows one executor under any URL (default HOSTNAME:PORT, stable across restarts; with --count, executor i is ID-i)")
	f.IntVar(&opts.MaxConns, "max-conns", 64, "cap on open connections, per executor served (--count multiplies it)")
	return c
}
