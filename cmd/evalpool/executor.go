package main

import (
	"net"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/executor"
)

func (a *app) executorCommand() *cobra.Command {
	var (
		listen string
		count  int
		opts   executor.ServerOptions
	)
	c := &cobra.Command{
		Use:   "executor --listen ADDR",
		Short: "Run the reference executor: a command per eval, or simulated work",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			var h http.Handler
			if count > 1 {
				fleet, err := executor.NewFleet(count, opts)
				if err != nil {
					return usageError{err}
				}
				h = fleet
			} else {
				opts.Logger = &a.log
				srv, err := executor.NewServer(opts)
				if err != nil {
					return usageError{err}
				}
				h = srv
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			a.log.Info().Str("addr", l.Addr().String()).Int("count", count).Str("exec", opts.Exec).Dur("latency", opts.Latency).
				Float64("fail_rate", opts.FailRate).Msg("executor listening")
			serveHTTP(c.Context(), l, h, &a.log)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9001", "address to listen on")
	f.IntVar(&count, "count", 1, "serve this many executors, executor i at http://ADDR/e/i (for load tests)")
	f.StringVar(&opts.Exec, "exec", "", "shell command run per eval: spec on stdin, JSON result on stdout")
	f.DurationVar(&opts.Latency, "latency", 0, "simulated time per eval (without --exec)")
	f.Float64Var(&opts.FailRate, "fail-rate", 0, "share of simulated evals that fail, 0 to 1 (without --exec)")
	return c
}
