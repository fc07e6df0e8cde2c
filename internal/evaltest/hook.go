package evaltest

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// ScriptCalls counts the calls a client makes to one script: each FCALL of
// its function, EVALSHA, and the EVAL that sends it after NOSCRIPT,
// pipelined or not. Tests that promise "one call for many" count with it.
type ScriptCalls struct {
	sha, function string
	n             atomic.Int64
}

// CountScript starts counting the calls of s (a *redis.Script or a
// *lua.Script) that c makes.
func CountScript(c *redis.Client, s interface{ Hash() string }) *ScriptCalls {
	h := &ScriptCalls{sha: s.Hash()}
	if f, ok := s.(interface{ Function() string }); ok {
		h.function = f.Function()
	}
	c.AddHook(h)
	return h
}

// N is how many calls there were so far.
func (h *ScriptCalls) N() int64 { return h.n.Load() }

func (h *ScriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *ScriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.runs(cmd) {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *ScriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if h.runs(cmd) {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

func (h *ScriptCalls) runs(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	arg, _ := args[1].(string)
	switch cmd.Name() {
	case "fcall":
		return arg != "" && arg == h.function
	case "evalsha":
		return arg == h.sha
	case "eval":
		sum := sha1.Sum([]byte(arg))
		return hex.EncodeToString(sum[:]) == h.sha
	}
	return false
}

// RoundTrips counts the round trips a client makes to Redis: a command, or
// a pipeline of them, each one. Tests that promise "one read" count with
// it.
type RoundTrips struct{ n atomic.Int64 }

// CountRoundTrips starts counting the round trips c makes.
func CountRoundTrips(c *redis.Client) *RoundTrips {
	h := &RoundTrips{}
	c.AddHook(h)
	return h
}

// N is how many round trips there were so far.
func (h *RoundTrips) N() int64 { return h.n.Load() }

func (h *RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}
