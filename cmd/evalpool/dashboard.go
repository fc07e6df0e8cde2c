package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/dashboard"
	"github.com/evalpool/evalpool/demo"
	"github.com/evalpool/evalpool/pool"
)

func (a *app) dashboardCommand() *cobra.Command {
	var listen string
	c := &cobra.Command{
		Use:   "dashboard --listen ADDR",
		Short: "Serve the pool page (/), Asynqmon (/monitoring/), /api/pool and /metrics",
		Args:  positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			conn, err := a.asynqConn()
			if err != nil {
				return err
			}
			client, err := a.redis()
			if err != nil {
				return err
			}
			p, err := a.pool()
			if err != nil {
				return err
			}
			return a.serveDashboard(c.Context(), listen, client, p, conn)
		},
	}
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve on")
	return c
}

func (a *app) serveDashboard(ctx context.Context, listen string, client redis.UniversalClient, p *pool.Pool, conn asynq.RedisConnOpt) error {
	d, err := dashboard.New(dashboard.Options{Pool: p, Redis: client, Asynqmon: conn, Logger: &a.log})
	if err != nil {
		return err
	}
	defer d.Close()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	a.log.Info().Str("url", "http://"+l.Addr().String()+"/").Msg("dashboard listening")
	fmt.Fprintf(a.stderr, "dashboard: http://%s/ (queues at /monitoring/); Ctrl-C to stop\n", l.Addr())
	serveHTTP(ctx, l, d, &a.log)
	return nil
}

// errDemoBroken is returned when a demo's report shows a broken promise.
var errDemoBroken = errors.New("demo: the pool lost or double-booked an executor")

func (a *app) demoCommand() *cobra.Command {
	var (
		opts  demo.Options
		serve string
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run evals end to end in one process, on an embedded Redis unless --redis is given",
		Long: `Run evals end to end in one process: simulated executors over loopback
HTTP, a worker with both cleanup paths, evals with failures, a progress bar
and a report. Without --redis (or EVALPOOL_REDIS_URL) it runs on an embedded
in-process Redis that keeps nothing. --serve keeps the dashboard up after the
report until Ctrl-C.`,
		Args: positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			where := "an embedded Redis (in-process, keeps nothing)"
			if c.Flags().Changed("redis") || envOr("EVALPOOL_REDIS_URL", "") != "" {
				conn, err := a.redisConn() // a bad URL is a usage error here too
				if err != nil {
					return err
				}
				opts.RedisURL, opts.RedisTLS, where = a.redisURL, a.redisTLS, "Redis at "+conn.String()
			}
			if c.Flags().Changed("pool") {
				opts.Pool = a.poolName
			}
			log := a.log
			if !c.Flags().Changed("log-level") {
				log = log.Level(zerolog.ErrorLevel) // the report tells the story
			}
			opts.Progress, opts.Logger = a.stderr, &log
			d, err := demo.Start(c.Context(), opts)
			if err != nil {
				return err
			}
			defer d.Close()
			fmt.Fprintf(a.stdout, "evalpool demo on %s\n", where)
			rep, err := d.Run(c.Context())
			if err != nil {
				return err
			}
			rep.Print(a.stdout)
			if serve != "" {
				if err := a.serveDashboard(c.Context(), serve, d.Redis(), d.Pool(), d.AsynqConn()); err != nil {
					return err
				}
			}
			if !rep.OK() {
				return errDemoBroken
			}
			return nil
		},
	}
	f := c.Flags()
	f.IntVar(&opts.Executors, "executors", 4, "simulated executors to start")
	f.IntVar(&opts.Evals, "evals", 200, "evals to run")
	f.Float64Var(&opts.FailRate, "fail-rate", 0.2, "share of executor calls that fail")
	f.StringVar(&serve, "serve", "", "after the report, serve the dashboard at ADDR until Ctrl-C")
	return c
}
