// Package lua holds the Redis scripts that change an evalpool pool.
//
// Every change to a pool is one script, so that it is atomic: no client can
// observe or interleave with half of a release. The scripts share a prelude
// (lib.lua) that names the keys and holds the one way a lease ends, so that
// release, reap and the reclaim inside acquire cannot drift apart. Each script
// is a *redis.Script: Run sends EVALSHA and falls back to EVAL on NOSCRIPT, so
// a flushed script cache or a restarted Redis costs one round trip, not an
// error.
package lua

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lib.lua
	lib string
	//go:embed register.lua
	register string
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
)

// The pool's scripts. Each takes the pool's keys in the order lib.lua gives;
// its own file documents ARGV and the reply.
var (
	Register   = redis.NewScript(lib + register)
	Deregister = redis.NewScript(lib + deregister)
	Acquire    = redis.NewScript(lib + acquire)
	Renew      = redis.NewScript(lib + renew)
	Release    = redis.NewScript(lib + release)
	Reap       = redis.NewScript(lib + reap)
	Counts     = redis.NewScript(lib + counts)
	Leave      = redis.NewScript(lib + leave)
	Label      = redis.NewScript(lib + label)
	Quarantine = redis.NewScript(lib + quarantine)
	Probe      = redis.NewScript(lib + probe)
	Clock      = redis.NewScript(lib + clock)
	// RunFinish is a run's, not a pool's: it takes the run's keys.
	RunFinish = redis.NewScript(runFinish)
)

// All lists every pool script (all but RunFinish, which takes a run's keys),
// for loading them before a pipeline and for tests.
var All = map[string]*redis.Script{
	"register":   Register,
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
