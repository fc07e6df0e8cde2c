// Command evalpool runs evals on a fixed pool of remote executors, on top of
// Asynq and Redis. This package only parses flags and wires the parts
// together; the behaviour lives in pool, tasks, worker and executor.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/pool"
)

// Exit codes, as DESIGN.md gives them.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
	exitNone  = 3 // nothing available, or check failed
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
	poolName  string
	logFormat string

	log      zerolog.Logger
	logLevel zerolog.Level
	client   redis.UniversalClient
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
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
		PersistentPreRunE: func(*cobra.Command, []string) error { return a.setup() },
	}
	f := root.PersistentFlags()
	f.StringVar(&a.redisURL, "redis", envOr("EVALPOOL_REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis URL (env EVALPOOL_REDIS_URL)")
	f.StringVar(&a.poolName, "pool", envOr("EVALPOOL_POOL", pool.DefaultName), "pool name (env EVALPOOL_POOL)")
	f.StringVar(&a.logFormat, "log-format", "json", "log format: json or console")
	f.Var(levelFlag{&a.logLevel}, "log-level", "log level: debug, info, warn, error")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.poolCommand(), a.workerCommand(), a.enqueueCommand(), a.evalCommand(), a.executorCommand(), a.dashboardCommand(), a.demoCommand())
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

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug().Str("component", "go-redis").Msgf(format, v...)
}

// redis opens the client named by --redis on first use: a cluster client
// when the URL names more nodes (redis://n1:7000?addr=n2:7000&addr=n3:7000),
// else a standalone one.
func (a *app) redis() (redis.UniversalClient, error) {
	if a.client != nil {
		return a.client, nil
	}
	if isClusterURL(a.redisURL) {
		opt, err := redis.ParseClusterURL(a.redisURL)
		if err != nil {
			return nil, usagef("--redis %q: %w", a.redisURL, err)
		}
		opt.DialTimeout = 2 * time.Second
		a.client = redis.NewClusterClient(opt)
		return a.client, nil
	}
	opt, err := redis.ParseURL(a.redisURL)
	if err != nil {
		return nil, usagef("--redis %q: %w", a.redisURL, err)
	}
	opt.DialTimeout = 2 * time.Second
	a.client = redis.NewClient(opt)
	return a.client, nil
}

func isClusterURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Query().Has("addr")
}

// asynqConn is --redis as Asynq's connection option, for Asynqmon, which
// wants a connection of its own.
func (a *app) asynqConn() (asynq.RedisConnOpt, error) {
	if isClusterURL(a.redisURL) {
		opt, err := redis.ParseClusterURL(a.redisURL)
		if err != nil {
			return nil, usagef("--redis %q: %w", a.redisURL, err)
		}
		return asynq.RedisClusterClientOpt{Addrs: opt.Addrs, Username: opt.Username, Password: opt.Password, TLSConfig: opt.TLSConfig}, nil
	}
	conn, err := asynq.ParseRedisURI(a.redisURL)
	if err != nil {
		return nil, usagef("--redis %q: %w", a.redisURL, err)
	}
	return conn, nil
}

func (a *app) pool() (*pool.Pool, error) {
	c, err := a.redis()
	if err != nil {
		return nil, err
	}
	return pool.New(c, pool.Options{Name: a.poolName, Logger: &a.log})
}

func (a *app) close() {
	if a.client != nil {
		_ = a.client.Close()
	}
}
