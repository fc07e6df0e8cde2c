package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/dashboard"
	"github.com/evalpool/evalpool/demo"
)

// dashboardFlags are the dashboard's access flags, shared by dashboard and
// demo --serve.
type dashboardFlags struct {
	authToken      string
	admin          bool
	insecureListen bool
	allowedHosts   []string
	server         dashboard.Options // the server's bounds only
}

func (f *dashboardFlags) register(c *cobra.Command) {
	fs := c.Flags()
	// No env default in the flag itself: --help would print the token.
	fs.StringVar(&f.authToken, "auth-token", "", "token every route but /healthz requires, as \"Authorization: Bearer TOKEN\" or through the /login page's cookie; 16 bytes at least (env EVALPOOL_AUTH_TOKEN, or a file named by EVALPOOL_AUTH_TOKEN_FILE)")
	fs.BoolVar(&f.admin, "admin", false, "let Asynqmon change queues and tasks (pause, delete, run, archive, cancel); without it, it is read-only")
	fs.BoolVar(&f.insecureListen, "insecure-listen", false, "without a token, serve on a non-loopback address anyway: anyone who reaches it can submit and cancel evals")
	fs.StringSliceVar(&f.allowedHosts, "allowed-hosts", nil, "comma-separated names the dashboard is reached by, besides localhost, 127.0.0.1, [::1] and --listen's host: NAME (any port), NAME:PORT, or .DOMAIN (it and every name under it); any other Host is refused (env EVALPOOL_ALLOWED_HOSTS)")
	fs.DurationVar(&f.server.ReadHeaderTimeout, "read-header-timeout", dashboard.DefaultReadHeaderTimeout, "how long a client may take to send a request's header")
	fs.DurationVar(&f.server.ReadTimeout, "read-timeout", dashboard.DefaultReadTimeout, "how long a client may take to send a whole request, its body included (a response may stream for longer)")
	fs.DurationVar(&f.server.IdleTimeout, "idle-timeout", dashboard.DefaultIdleTimeout, "how long a kept-alive connection may wait for its next request")
	fs.IntVar(&f.server.MaxConns, "max-conns", 0, fmt.Sprintf("connections open at once; past it the longest idle is closed, one that never sent the token first (default %d, or a third of the descriptor limit if lower)", dashboard.DefaultMaxConns))
}

// hosts is --allowed-hosts, else EVALPOOL_ALLOWED_HOSTS, and the host
// --listen names, if it names one (not every interface).
func (f *dashboardFlags) hosts(listen string) []string {
	hosts := f.allowedHosts
	if len(hosts) == 0 {
		for h := range strings.SplitSeq(os.Getenv("EVALPOOL_ALLOWED_HOSTS"), ",") {
			if h = strings.TrimSpace(h); h != "" {
				hosts = append(hosts, h)
			}
		}
	}
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			if ip != nil && ip.To4() == nil {
				host = "[" + host + "]"
			}
			hosts = append(hosts, host)
		}
	}
	return hosts
}

// token is --auth-token, else EVALPOOL_AUTH_TOKEN, else the file
// EVALPOOL_AUTH_TOKEN_FILE names. A token anyone could know (one this
// project ships, or a short one) is refused: it guards nothing.
func (f *dashboardFlags) token() (string, error) {
	return serviceSecret("dashboard: the auth token", f.authToken, "EVALPOOL_AUTH_TOKEN")
}

func (a *app) dashboardCommand() *cobra.Command {
	var (
		listen, metricsAddr string
		flags               dashboardFlags
	)
	c := &cobra.Command{
		Use:   "dashboard --listen ADDR [--auth-token T] [--admin]",
		Short: "Serve the pool page (/), the runs pages (/runs), the API (/api/v1/), Asynqmon (/monitoring/) and /metrics",
		Long: `Serve the pool page (/), the JSON API (/api/v1/, described at
/api/v1/openapi.json), Asynqmon (/monitoring/), /api/pool, /metrics and
/healthz.

With --auth-token (or EVALPOOL_AUTH_TOKEN) every route but /healthz needs the
token: "Authorization: Bearer TOKEN", or the cookie the /login page sets.
Without one, the dashboard serves on loopback addresses only, unless
--insecure-listen. Asynqmon is read-only unless --admin.

Whatever the token, every route but /healthz answers only requests to the
names the dashboard is reached by (the Host header): localhost, 127.0.0.1,
[::1], --listen's host, and --allowed-hosts (EVALPOOL_ALLOWED_HOSTS), such as
dash.example.com or .example.com. That keeps DNS rebinding pages out.`,
		Args: positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if err := flags.check(listen); err != nil {
				return err
			}
			conn, err := a.asynqConn()
			if err != nil {
				return err
			}
			ep, err := a.evalpool()
			if err != nil {
				return err
			}
			return a.serveDashboard(c.Context(), listen, metricsAddr, flags, ep, a.poolName, conn)
		},
	}
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve on")
	c.Flags().StringVar(&metricsAddr, "metrics-addr", "", "also serve /metrics at ADDR (e.g. :9090) with no token, for a Prometheus on a private network; off when empty")
	flags.register(c)
	return c
}

// check refuses a token anyone could know and, without a token, an
// address that is not loopback unless --insecure-listen.
func (f *dashboardFlags) check(listen string) error {
	token, err := f.token()
	if err != nil || token != "" || f.insecureListen {
		return err
	}
	if !loopback(listen) {
		return usagef("dashboard: %s is not a loopback address and there is no --auth-token (or EVALPOOL_AUTH_TOKEN): anyone who reaches it could submit and cancel evals; give a token, or --insecure-listen", listen)
	}
	return nil
}

// loopback reports whether every address listen may bind is a loopback
// one: an IP of 127.0.0.0/8 or ::1, or a name that resolves only to such.
// An empty host (":8080") is every interface.
func loopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return true
}

func (a *app) serveDashboard(ctx context.Context, listen, metricsAddr string, flags dashboardFlags, ep *evalpool.Client, poolName string, conn asynq.RedisConnOpt) error {
	token, err := flags.token()
	if err != nil {
		return err
	}
	opts := flags.server
	opts.Client, opts.Pool, opts.Asynqmon, opts.Logger, opts.Registry = ep, poolName, conn, &a.log, prometheus.NewRegistry()
	opts.AuthToken, opts.Admin, opts.AllowedHosts = token, flags.admin, flags.hosts(listen)
	d, err := dashboard.New(opts)
	if err != nil {
		return usageError{err}
	}
	defer d.Close()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	ml, err := a.listenMetrics(metricsAddr)
	if err != nil {
		_ = l.Close()
		return err
	}
	if ml != nil {
		mctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { serveHTTP(mctx, ml, metricsHandler(opts.Registry), &a.log) })
		defer wg.Wait()
		defer stop()
	}
	// The warnings first: the line saying where it listens is the last.
	if token == "" {
		a.log.Warn().Str("addr", l.Addr().String()).Msg("dashboard runs without authentication: anyone who reaches it can submit and cancel evals (--auth-token)")
		fmt.Fprintln(a.stderr, "dashboard: WARNING: no --auth-token: runs without authentication")
	}
	a.log.Info().Str("url", "http://"+l.Addr().String()+"/").Bool("auth", token != "").Bool("admin", flags.admin).
		Strs("allowed_hosts", opts.AllowedHosts).Msg("dashboard listening")
	fmt.Fprintf(a.stderr, "dashboard: http://%s/ (queues at /monitoring/, API at /api/v1/); Ctrl-C to stop\n", l.Addr())
	done := make(chan error, 1)
	go func() { done <- d.Serve(l) }()
	select {
	case <-ctx.Done():
	case err := <-done:
		return err
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = d.Shutdown(shutdown)
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// errDemoBroken is returned when a demo's report shows a broken promise.
var errDemoBroken = errors.New("demo: the pool lost or double-booked an executor")

func (a *app) demoCommand() *cobra.Command {
	var (
		opts  demo.Options
		serve string
		flags dashboardFlags
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
			if serve != "" {
				if err := flags.check(serve); err != nil {
					return err
				}
			}
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
			opts.Logger = &log
			var bar progress
			opts.Progress = func(ended, total int) {
				if bar == nil {
					bar = a.newProgress(total, "evals")
				}
				bar.Set(ended)
				if ended == total {
					bar.Finish()
				}
			}
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
				if err := a.serveDashboard(c.Context(), serve, "", flags, d.Client(), d.Pool().Name(), d.AsynqConn()); err != nil {
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
	flags.register(c)
	return c
}
