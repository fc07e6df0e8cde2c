// Command evalpool runs evals on a fixed pool of remote executors, on top of
// Asynq and Redis. This package only parses flags and wires the parts
// together; the behaviour lives in pool, tasks, worker and executor.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/redisconn"
)

// Exit codes, as docs/design.md gives them.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
	exitNone  = 3 // nothing available, or check failed
	// exitInterrupted is a wait stopped by Ctrl-C (128 + SIGINT, as a
	// shell reports it): the evals go on.
	exitInterrupted = 130
)

// errInterrupted is returned by a wait that Ctrl-C stopped.
var errInterrupted = errors.New("interrupted")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal stops the command gracefully (a worker returns its
	// executors first); a second one kills the process at once.
	go func() {
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks an error as the caller's mistake in how they called us.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// errCheckFailed is returned by `pool check` when an invariant is broken.
var errCheckFailed = errors.New("pool check failed")

// run executes one command line and returns its exit code; errors go to
// stderr as one line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := &app{stdout: stdout, stderr: stderr, logLevel: zerolog.InfoLevel}
	root := app.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	defer app.close()
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "evalpool: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	var ue usageError
	switch {
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	case errors.As(err, &ue), errors.Is(err, pool.ErrInvalid):
		return exitUsage
	case errors.Is(err, pool.ErrNoExecutor), errors.Is(err, errCheckFailed), errors.Is(err, errNotFinished):
		return exitNone
	default:
		return exitError
	}
}

// app holds the global flags and what they open.
type app struct {
	stdout, stderr io.Writer

	redisURL  string
	redisTLS  redisconn.TLSFiles
	poolName  string
	logFormat string

	log      zerolog.Logger
	logLevel zerolog.Level
	conn     *redisconn.Conn
	client   redis.UniversalClient
	ep       *evalpool.Client
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// defaultRedisURL is --redis without the flag or EVALPOOL_REDIS_URL.
const defaultRedisURL = "redis://127.0.0.1:6379/0"

// envFlags are the global flags an environment variable gives when the
// flag is not. They are read after parsing and never made a flag's
// default: cobra prints defaults in --help and in every usage text, and a
// Redis URL carries its password.
var envFlags = []struct{ flag, env string }{
	{"redis", "EVALPOOL_REDIS_URL"},
	{"redis-ca", "EVALPOOL_REDIS_CA"},
	{"redis-cert", "EVALPOOL_REDIS_CERT"},
	{"redis-key", "EVALPOOL_REDIS_KEY"},
	{"pool", "EVALPOOL_POOL"},
}

// flagsFromEnv sets each of envFlags that was not given from its
// environment variable, when that is set. Setting the value, not the flag,
// leaves it not Changed: a command can still tell a flag given from one
// read from the environment.
func flagsFromEnv(c *cobra.Command) {
	for _, e := range envFlags {
		f := c.Flags().Lookup(e.flag)
		if f == nil || f.Changed {
			continue
		}
		if v := os.Getenv(e.env); v != "" {
			_ = f.Value.Set(v) // a string flag: Set cannot fail
		}
	}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "evalpool",
		Short:         "Run evals on a fixed pool of remote executors, on Asynq and Redis",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          positional(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			_ = c.Usage()
			return usagef("missing command")
		},
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			flagsFromEnv(c)
			return a.setup()
		},
	}
	f := root.PersistentFlags()
	f.StringVar(&a.redisURL, "redis", defaultRedisURL,
		"Redis URL: redis[s]://[user:pass@]host:port/db, a cluster redis://n1:p?addr=n2:p&addr=n3:p, or Sentinel redis[s]-sentinel://[user:pass@]s1:p,s2:p,s3:p/db?master=NAME (env EVALPOOL_REDIS_URL)")
	f.StringVar(&a.redisTLS.CA, "redis-ca", "", "PEM file of the CA of Redis's TLS certificate, for rediss:// URLs; default: the system's roots (env EVALPOOL_REDIS_CA)")
	f.StringVar(&a.redisTLS.Cert, "redis-cert", "", "PEM client certificate for Redis's mutual TLS, with --redis-key (env EVALPOOL_REDIS_CERT)")
	f.StringVar(&a.redisTLS.Key, "redis-key", "", "PEM key of --redis-cert (env EVALPOOL_REDIS_KEY)")
	f.StringVar(&a.poolName, "pool", pool.DefaultName, "pool name (env EVALPOOL_POOL)")
	f.StringVar(&a.logFormat, "log-format", "json", "log format: json or console")
	f.Var(levelFlag{&a.logLevel}, "log-level", "log level: debug, info, warn, error")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.poolCommand(), a.workerCommand(), a.enqueueCommand(), a.evalCommand(), a.executorCommand(), a.dashboardCommand(), a.demoCommand(), a.runCommand(), a.healthcheckCommand(), a.secretsCommand())
	return root
}

// positional makes cobra's argument checks usage errors (exit 2).
func positional(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// group is the RunE of a command that only holds subcommands.
func group(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], c.CommandPath())
	}
	_ = c.Usage()
	return usagef("%s needs a subcommand", c.CommandPath())
}

func (a *app) setup() error {
	switch a.logFormat {
	case "json":
		a.log = zerolog.New(a.stderr).With().Timestamp().Logger()
	case "console":
		a.log = zerolog.New(zerolog.ConsoleWriter{Out: a.stderr, TimeFormat: time.TimeOnly}).With().Timestamp().Logger()
	default:
		return usagef("--log-format must be json or console, got %q", a.logFormat)
	}
	a.log = a.log.Level(a.logLevel)
	redis.SetLogger(redisLog{a.log})
	// Libraries that log with the standard logger (Asynq's queue metrics
	// collector does) log into ours, as JSON like every other line.
	stdlog.SetFlags(0)
	stdlog.SetOutput(stdLog{a.log})
	return nil
}

// levelFlag parses a zerolog level.
type levelFlag struct{ l *zerolog.Level }

func (f levelFlag) String() string {
	if f.l == nil {
		return zerolog.InfoLevel.String()
	}
	return f.l.String()
}

func (f levelFlag) Set(s string) error {
	l, err := zerolog.ParseLevel(s)
	if err != nil || s == "" {
		return fmt.Errorf("want debug, info, warn or error, got %q", s)
	}
	*f.l = l
	return nil
}

func (levelFlag) Type() string { return "level" }

// redisLog sends go-redis's own messages (dial retries and the like) to our
// log at debug level: the error that reaches the user already says it.
type redisLog struct{ log zerolog.Logger }

// stdLog is the standard logger's output, as warn lines of ours.
type stdLog struct{ log zerolog.Logger }

func (l stdLog) Write(p []byte) (int, error) {
	l.log.Warn().Str("component", "stdlib").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug().Str("component", "go-redis").Msgf(format, v...)
}

// redisConn parses --redis and the TLS flags on first use. A URL or TLS
// file it cannot use is a usage error.
func (a *app) redisConn() (*redisconn.Conn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	conn, err := redisconn.Parse(redisconn.Config{URL: a.redisURL, TLS: a.redisTLS, DialTimeout: 2 * time.Second})
	if err != nil {
		return nil, usageError{err}
	}
	a.conn = conn
	return conn, nil
}

// redis opens the client of --redis on first use, shared by the pool and
// Asynq: a failover client for a Sentinel URL, a cluster client for a
// cluster URL, else a plain one.
func (a *app) redis() (redis.UniversalClient, error) {
	if a.client != nil {
		return a.client, nil
	}
	conn, err := a.redisConn()
	if err != nil {
		return nil, err
	}
	a.client = conn.NewClient()
	return a.client, nil
}

// asynqConn is --redis as Asynq's connection option, user and TLS included,
// for Asynqmon, which wants a connection of its own.
func (a *app) asynqConn() (asynq.RedisConnOpt, error) {
	conn, err := a.redisConn()
	if err != nil {
		return nil, err
	}
	return conn.AsynqConnOpt(), nil
}

// evalpool is the producer's client on --redis, made on first use: every
// command but the worker's, the executor's and the demo's works through it.
func (a *app) evalpool() (*evalpool.Client, error) {
	if a.ep != nil {
		return a.ep, nil
	}
	rdb, err := a.redis()
	if err != nil {
		return nil, err
	}
	a.ep, err = evalpool.NewClient(rdb, evalpool.ClientConfig{Logger: &a.log})
	return a.ep, err
}

// pool is the pool of --pool.
func (a *app) pool() (*pool.Pool, error) {
	c, err := a.evalpool()
	if err != nil {
		return nil, err
	}
	p, err := c.Pool(a.poolName)
	if err != nil {
		return nil, usageError{err}
	}
	return p, nil
}

func (a *app) close() {
	if a.client != nil {
		_ = a.client.Close()
	}
}

// healthcheckCommand is a container's health check that needs no curl:
// GET the URL, exit 0 on a 2xx answer.
func (a *app) healthcheckCommand() *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "healthcheck URL",
		Short: "GET URL and exit 0 on a 2xx answer (a container health check without curl)",
		Args:  positional(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
			if err != nil {
				return usageError{err}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("healthcheck: %s answered %s", args[0], resp.Status)
			}
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for the answer")
	return c
}
