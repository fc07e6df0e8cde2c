// Package lua holds the Redis scripts that change an evalpool pool.
//
// Every change to a pool is one script, so that it is atomic: no client can
// observe or interleave with half of a release. The pool's scripts share a
// prelude (lib.lua) that names the keys and holds the one way a lease ends,
// so that release, reap and the reclaim inside acquire cannot drift apart.
// On Redis ≥ 7 they are one function library (FUNCTION LOAD), loaded the
// first time a call finds it missing, so that the prelude is compiled and
// run once per load, not on every call: run as scripts, an acquire and a
// release take Redis a fifth longer. Where functions are not served (Redis
// 6.2, miniredis, an ACL that denies FCALL or FUNCTION LOAD), Run sends the
// same code as a script: EVALSHA, falling back to EVAL on NOSCRIPT. A
// flushed cache, a restarted Redis or a failover to a replica without the
// library costs one round trip, not an error.
//
// Each script's first line declares its flags for Redis ≥ 7, which decides
// from them whether the script may run at maxmemory: those that free an
// executor or keep memory flat (release, reap, leave, renew, deregister)
// declare allow-oom, so that leases still end when Redis is full; those that
// grow the pool (acquire, register...) declare none and are refused whole,
// before they change anything; the reads declare no-writes. A function
// declares the same flags. Redis 6.2 and miniredis refuse a script that
// starts with a flags line: a client whose server refused it once is sent
// the same script with that line commented out, where the old rules apply
// (a read runs; a script's first write that grows memory fails, before
// anything changed).
package lua

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
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
	//go:embed run_busy.lua
	runBusy string
	//go:embed run_attempt.lua
	runAttempt string
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
	//go:embed admit_run.lua
	admitRun string
)

// The pool's scripts. Each takes the pool's keys in the order lib.lua gives;
// its own file documents ARGV and the reply.
var (
	Register   = poolScript("register", register)
	Migrate    = poolScript("migrate", migrate)
	Deregister = poolScript("deregister", deregister)
	Acquire    = poolScript("acquire", acquire)
	Renew      = poolScript("renew", renew)
	Release    = poolScript("release", release)
	Reap       = poolScript("reap", reap)
	Counts     = poolScript("counts", counts)
	Leave      = poolScript("leave", leave)
	Label      = poolScript("label", label)
	Quarantine = poolScript("quarantine", quarantine)
	Probe      = poolScript("probe", probe)
	Clock      = poolScript("clock", clock)
	// RunFinish is a run's, not a pool's: it takes the run's keys.
	RunFinish = newScript(runBusy, runFinish)
	// RunAttempt is a run's: it takes the run's keys, as RunFinish.
	RunAttempt = newScript(runBusy, runAttempt)
	// RunFinishMany is a run's: it takes the run's keys, as RunFinish.
	RunFinishMany = newScript("", runFinishMany)
	// RunReopen is a run's: it takes the run's keys, as RunFinish.
	RunReopen = newScript("", runReopen)
	// AdmitRun is a run's: it takes the run's keys, as RunFinish.
	AdmitRun = newScript("", admitRun)
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

// Script is one script in the forms servers take: a function of the pool's
// library (pool scripts only), and a script with its flags line or with
// that line commented out for servers that refuse it.
type Script struct {
	// name is its name among the pool's scripts, "" for a script outside
	// the library.
	name           string
	flagged, plain *redis.Script
}

// poolScripts are the pool's scripts, by name, for the library.
var poolScripts = map[string]string{}

// poolScript is a script of the pool: the prelude, then body, run as a
// script or as a function of the library.
func poolScript(name, body string) *Script {
	poolScripts[name] = body
	flags, rest, _ := strings.Cut(body, "\n")
	s := newScript(lib+"bind(KEYS)\n", flags+"\n"+rest)
	s.name = name
	return s
}

// Function is the script's name in the library, "" for a script outside it.
func (s *Script) Function() string {
	if s.name == "" {
		return ""
	}
	return "evalpool_" + libraryVersion() + "_" + s.name
}

// library is the code of the function library, built once from the
// prelude and every pool script.
var library = sync.OnceValue(func() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#!lua name=evalpool_%s\n%s\n", libraryVersion(), lib)
	for _, name := range slices.Sorted(maps.Keys(poolScripts)) {
		flags, body, _ := strings.Cut(poolScripts[name], "\n")
		var declared []string
		for _, f := range strings.Split(strings.TrimPrefix(strings.TrimPrefix(flags, "#!lua"), " flags="), ",") {
			if f = strings.TrimSpace(f); f != "" {
				declared = append(declared, "'"+f+"'")
			}
		}
		fmt.Fprintf(&b, "redis.register_function{function_name = 'evalpool_%s_%s', flags = { %s }, callback = function(KEYS, ARGV)\nbind(KEYS)\n%s\nend}\n",
			libraryVersion(), name, strings.Join(declared, ", "), body)
	}
	return b.String()
})

// libraryVersion names the library by its code, so that workers of two
// releases on one Redis each call their own.
var libraryVersion = sync.OnceValue(func() string {
	h := sha1.New()
	h.Write([]byte(lib))
	for _, name := range slices.Sorted(maps.Keys(poolScripts)) {
		h.Write([]byte(name + "\n" + poolScripts[name]))
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
})

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

// Run calls the pool's function (FCALL), loading the library when the
// server lacks it, or sends the script (EVALSHA, then EVAL on NOSCRIPT) of
// the form c's server takes.
func (s *Script) Run(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
	if cmd, ok := s.fcall(ctx, c, keys, args...); ok {
		return cmd
	}
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

// Pipe queues the call on pipe, a pipeline of c, as the function (once c's
// server has served one) or the script c's server takes, without loading
// either: when the answer is NotRun, the caller runs it again with Run.
func (s *Script) Pipe(ctx context.Context, c redis.Scripter, pipe redis.Pipeliner, keys []string, args ...any) *redis.Cmd {
	_, served := functionsServed.Load(c)
	if _, no := noFunctions.Load(c); served && !no && s.name != "" {
		return pipe.FCall(ctx, s.Function(), keys, args...)
	}
	return s.For(c).EvalSha(ctx, pipe, keys, args...)
}

// NotRun reports whether err says the server did not run the call: it
// lacks the script or the library, or no longer serves this client the
// library (an ACL changed). Run loads what is missing, or sends the script.
func NotRun(err error) bool {
	return redis.HasErrorPrefix(err, "NOSCRIPT") || missingFunction(err) || unserved(err)
}

// noFunctions holds the clients whose server does not serve the library:
// too old, miniredis, or an ACL that denies it; functionsServed those
// whose server served a call of it.
var noFunctions, functionsServed sync.Map // redis.Scripter -> struct{}

// functionCaller is a client that can call and load functions.
type functionCaller interface {
	FCall(ctx context.Context, function string, keys []string, args ...any) *redis.Cmd
	FunctionLoadReplace(ctx context.Context, code string) *redis.StringCmd
}

// fcall calls the script as a function of the library, loading the library
// when the server lacks it. ok is false when the call is for the script
// form: a script outside the library, a server that does not serve
// functions (remembered for c), a library that would not load (a full
// Redis refuses FUNCTION LOAD, and a script that frees memory must still
// run) or was flushed again at once.
func (s *Script) fcall(ctx context.Context, c redis.Scripter, keys []string, args ...any) (*redis.Cmd, bool) {
	f, can := c.(functionCaller)
	if _, no := noFunctions.Load(c); no || !can || s.name == "" {
		return nil, false
	}
	cmd := f.FCall(ctx, s.Function(), keys, args...)
	if missingFunction(cmd.Err()) {
		err := loadLibrary(ctx, c, f)
		if err != nil {
			if unserved(err) {
				noFunctions.Store(c, struct{}{})
			}
			return nil, false
		}
		cmd = f.FCall(ctx, s.Function(), keys, args...)
	}
	switch err := cmd.Err(); {
	case unserved(err):
		noFunctions.Store(c, struct{}{})
		return nil, false
	case missingFunction(err):
		// Flushed again since it loaded: the script form does not race.
		return nil, false
	}
	functionsServed.Store(c, struct{}{})
	return cmd, true
}

// loadLibrary loads the library on c's server, on every master of a
// cluster, replacing one of the same name (the same code).
func loadLibrary(ctx context.Context, c redis.Scripter, f functionCaller) error {
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.FunctionLoadReplace(ctx, library()).Err()
		})
	}
	return f.FunctionLoadReplace(ctx, library()).Err()
}

// missingFunction reports whether err is a server's answer to a call of a
// function it has not loaded: the whole answer, so that a script's own
// error that quotes the words (an eval's ID) is never taken for it.
func missingFunction(err error) bool {
	return err != nil && err.Error() == "ERR Function not found"
}

// unserved reports whether err says the server does not serve FCALL or
// FUNCTION to this client: an unknown command (Redis 6.2, miniredis) or an
// ACL's refusal, both answered before any script runs.
func unserved(err error) bool {
	if err == nil {
		return false
	}
	msg := strings.ToLower(err.Error())
	return (strings.HasPrefix(msg, "err unknown command") || strings.HasPrefix(msg, "noperm")) &&
		(strings.Contains(msg, "fcall") || strings.Contains(msg, "function"))
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
