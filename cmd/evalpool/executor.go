package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

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
			s, err := serviceSecret("executor: the secret", secret, executor.EnvSecret)
			if err != nil {
				return err
			}
			if s != "" {
				opts.Secret = []byte(s)
			}
			if len(opts.Secret) == 0 && !loopback(listen) {
				return usagef("executor: %s is not a loopback address and there is no secret: any web page a user opens, or anyone who reaches it, could run evals on it; set one in %s (or --executor-secret), the same as the workers'",
					listen, executor.EnvSecret)
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
			if opts.Tail == 0 {
				opts.Tail = -1 // the flag's 0 is none; the option's 0 is its default
			}
			if opts.Exec != "" && opts.StateDir == "" {
				opts.StateDir = defaultStateDir(l.Addr())
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
				a.log.Warn().Msg("executor has no secret (--executor-secret or " + executor.EnvSecret + "): it accepts evals from any local process; it listens on loopback only")
			}
			if opts.AcceptV1 {
				a.log.Warn().Msg("executor accepts v1 signatures (--accept-v1-signatures): they can be replayed to any executor with the same secret; drop the flag once every worker is upgraded")
			}
			a.log.Info().Str("addr", l.Addr().String()).Int("count", count).Str("instance_id", instance).Bool("auth", len(opts.Secret) > 0).
				Strs("allowed_hosts", opts.Hosts).Int("max_conns", opts.MaxConns).Str("exec", execProgram(opts.Exec)).Str("state_dir", opts.StateDir).
				Dur("latency", opts.Latency).Float64("fail_rate", opts.FailRate).Msg("executor listening")
			return serve(c.Context(), l)
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9001", "address to listen on")
	f.IntVar(&count, "count", 1, "serve this many executors, executor i at http://ADDR/e/i (for load tests)")
	f.StringVar(&opts.Exec, "exec", "", "shell command run per eval: spec on stdin, result as the last JSON object line of stdout or in the file $"+refexec.EnvResultFile+"; the rest is log; exit other than 0, no result or out of time: the eval errored")
	f.IntVar(&opts.Tail, "output-tail", refexec.DefaultTail, "with --exec: bytes of the end of each of the command's stdout and stderr kept with its result, at most 65536; 0 for none")
	f.StringVar(&opts.StateDir, "state-dir", "", "with --exec: directory noting the running command's process group, so that a restart ends what a killed executor left (default evalpool-executor-ADDR under the temp dir, found again by a restart on the same address)")
	f.DurationVar(&opts.Latency, "latency", 0, "simulated time per eval (without --exec); a spec field \"sleep_ms\" overrides it for its eval")
	f.Float64Var(&opts.FailRate, "fail-rate", 0, "share of simulated evals that fail with a 500, 0 to 1 (without --exec)")
	f.Float64Var(&opts.GradeFailRate, "grade-fail-rate", 0, "share of simulated evals graded failed, 0 to 1 (without --exec; a spec's \"grade\" overrides it)")
	f.StringVar(&secret, "executor-secret", "", "secret every POST must be signed with, 16 bytes at least (env "+executor.EnvSecret+", which keeps it out of ps, or a file named by "+executor.EnvSecret+"_FILE); without one, anyone is accepted")
	f.StringVar(&opts.InstanceID, "instance-id", "", "ID reported at /healthz, by which the pool knows one executor under any URL (default HOSTNAME:PORT, stable across restarts; with --count, executor i is ID-i)")
	f.IntVar(&opts.MaxConns, "max-conns", 64, "cap on open connections, per executor served (--count multiplies it); unauthenticated ones are closed, oldest first, to make room")
	f.StringSliceVar(&opts.Hosts, "allowed-hosts", nil, "names the workers reach this executor by (host or host:port; a bare host is on the listen port), beside the listen address, loopback names and the host name: a signature made for another host is refused")
	f.BoolVar(&opts.AcceptV1, "accept-v1-signatures", false, "also accept v1 signatures, which any executor with the same secret would accept too: only while upgrading workers")
	return c
}

// defaultStateDir is the state directory of an executor listening on addr:
// a restart on the same address finds it again.
func defaultStateDir(addr net.Addr) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, addr.String())
	return filepath.Join(os.TempDir(), "evalpool-executor-"+name)
}

// execProgram is what the executor's log says of its --exec command: the
// program alone, after any VAR=value assignments and without its
// arguments, which may carry a key (GRADER_API_KEY=... grade --token ...).
func execProgram(command string) string {
	for _, word := range strings.Fields(command) {
		if name, _, ok := strings.Cut(word, "="); ok && name != "" && !strings.ContainsAny(name, "/'\"$") {
			continue
		}
		return filepath.Base(word) + " (arguments not logged)"
	}
	return ""
}
