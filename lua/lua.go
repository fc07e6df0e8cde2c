// Package lua holds the Redis scripts that change an evalpool pool.
//
// Every change to a pool is one script, so that it is atomic: no client can
// observe or interleave with half of a release. The scripts share a prelude
// (lib.lua) that names the keys and holds the one way a lease ends, so that
// release, reap and the reclaim inside acquire cannot drift apart. Run sends
// EVALSHA and falls back to EVAL on NOSCRIPT, so a flushed script cache or a
// restarted Redis costs one round trip, not an error.
//
// Each script's first line declares its flags for Redis ≥ 7, which decides
// from them whether the script may run at maxmemory: those that free an
// executor or keep memory flat (release, reap, leave, renew, deregister)
// declare allow-oom, so that leases still end when Redis is full; those that
// grow the pool (acquire, register...) declare none and are refused whole,
// before they change anything; the reads declare no-writes. Redis 6.2 and
// miniredis refuse a script that starts with a flags line: a client whose
// server refused it once is sent the same script with that line commented
// out, where the old rules apply (a read runs; a script's first write that
// grows memory fails, before anything changed).
package lua

import (
	"context"
	_ "embed"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lib.lua
	lib string
	//go:embed register.lua
	register string
	//go:embed migrate.lua
	migrate string
	//go:embed deregister.lua
	deregister string
	//go:embed acquire.lua
	acquire string
	//go:embed renew.lua
	renew string
	//go:embed release.lua
	release string
	//go:embed reap.lua
	reap string
	//go:embed counts.lua
	counts string
	//go:embed leave.lua
	leave string
	//go:embed label.lua
	label string
	//go:embed quarantine.lua
	quarantine string
	//go:embed probe.lua
	probe string
	//go:embed clock.lua
	clock string
	//go:embed run_finish.lua
	runFinish string
	//go:embed read.lua
	read string
	//go:embed run_cut.lua
	runCut string
	//go:embed result.lua
	result string
	//go:embed raise_fence.lua
	raiseFence string
	//go:embed run_finish_many.lua
	runFinishMany string
	//go:embed run_cancel.lua
	runCancel string
	//go:embed run_reopen.lua
	runReopen string
)

// The pool's scripts. Each takes the pool's keys in the order lib.lua gives;
// its own file documents ARGV and the reply.
var (
	Register   = newScript(lib, register)
	Migrate    = newScript(lib, migrate)
	Deregister = newScript(lib, deregister)
	Acquire    = newScript(lib, acquire)
	Renew      = newScript(lib, renew)
	Release    = newScript(lib, release)
	Reap       = newScript(lib, reap)
	Counts     = newScript(lib, counts)
	Leave      = newScript(lib, leave)
	Label      = newScript(lib, label)
	Quarantine = newScript(lib, quarantine)
	Probe      = newScript(lib, probe)
	Clock      = newScript(lib, clock)
	// RunFinish is a run's, not a pool's: it takes the run's keys.
	RunFinish = newScript("", runFinish)
	// RunFinishMany is a run's: it takes the run's keys, as RunFinish.
	RunFinishMany = newScript("", runFinishMany)
	// RunReopen is a run's: it takes the run's keys, as RunFinish.
	RunReopen = newScript("", runReopen)
	// RunCancel is Asynq's: it takes a queue's pending list and tasks.
	RunCancel = newScript("", runCancel)
	// RunCut is a run's too: it takes the run's meta key.
	RunCut = newScript("", runCut)
	// WriteResult is Asynq's: it takes an eval's task hash.
	WriteResult = newScript("", result)
	// RaiseFence takes the pool's executors key alone.
	RaiseFence = newScript("", raiseFence)
	// readScript backs Read.
	readScript = newScript("", read)
)

// All lists every pool script (all but RunFinish, which takes a run's keys),
// for loading them before a pipeline and for tests.
var All = map[string]*Script{
	"register":   Register,
	"migrate":    Migrate,
	"deregister": Deregister,
	"acquire":    Acquire,
	"renew":      Renew,
	"release":    Release,
	"reap":       Reap,
	"counts":     Counts,
	"leave":      Leave,
	"label":      Label,
	"quarantine": Quarantine,
	"probe":      Probe,
	"clock":      Clock,
}

// Script is one script in the two forms servers take: with its flags line,
// and with that line commented out for servers that refuse it.
type Script struct {
	flagged, plain *redis.Script
}

// unflagged holds the clients whose server refused a flags line.
var unflagged sync.Map // redis.Scripter -> struct{}

// newScript puts body's flags line (its first) ahead of the prelude, where
// Redis looks for it.
func newScript(prelude, body string) *Script {
	flags, rest, _ := strings.Cut(body, "\n")
	if !strings.HasPrefix(flags, "#!lua") {
		panic("lua: a script's first line must be its flags (#!lua ...), got " + flags)
	}
	return &Script{
		flagged: redis.NewScript(flags + "\n" + prelude + rest),
		plain:   redis.NewScript("-- " + flags + "\n" + prelude + rest),
	}
}

// For is the form of the script for c's server: the flagged one unless the
// server refused it. A pipeline is never known to refuse it, so a caller
// that pipelines picks the form with its client.
func (s *Script) For(c redis.Scripter) *redis.Script {
	if _, ok := unflagged.Load(c); ok {
		return s.plain
	}
	return s.flagged
}

// Hash is the SHA1 of the flagged form, the one Redis ≥ 7 caches.
func (s *Script) Hash() string { return s.flagged.Hash() }

// Run sends EVALSHA, then EVAL on NOSCRIPT, of the form c's server takes.
func (s *Script) Run(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
	cmd := s.For(c).Run(ctx, c, keys, args...)
	if refusesFlags(cmd.Err()) {
		unflagged.Store(c, struct{}{})
		cmd = s.plain.Run(ctx, c, keys, args...)
	}
	return cmd
}

// EvalSha sends EVALSHA of the form c's server takes.
func (s *Script) EvalSha(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
	return s.For(c).EvalSha(ctx, c, keys, args...)
}

// Load loads the form c's server takes into its script cache.
func (s *Script) Load(ctx context.Context, c redis.Scripter) *redis.StringCmd {
	cmd := s.For(c).Load(ctx, c)
	if refusesFlags(cmd.Err()) {
		unflagged.Store(c, struct{}{})
		cmd = s.plain.Load(ctx, c)
	}
	return cmd
}

// Exists reports whether c's server caches the form it takes.
func (s *Script) Exists(ctx context.Context, c redis.Scripter) *redis.BoolSliceCmd {
	return s.For(c).Exists(ctx, c)
}

// refusesFlags reports whether err is a server's refusal of the flags line:
// Redis 6.2 and miniredis compile it as Lua, where "#" is a syntax error.
func refusesFlags(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Error compiling script") && strings.Contains(err.Error(), "near '#'")
}
