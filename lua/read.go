package lua

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Read runs cmds, read commands on keys of one hash slot, as one atomic
// step, and gives each its reply or its own error, as a MULTI of them would.
// Unlike a MULTI it works on a Redis at maxmemory. keys route the call in a
// cluster. The error returned is the call's, when it did not run; a
// command's own is on the command. Supported replies are those of
// *redis.StringCmd, IntCmd, StringSliceCmd, MapStringStringCmd, ZSliceCmd
// (WITHSCORES) and TimeCmd.
func Read(ctx context.Context, c redis.Scripter, keys []string, cmds ...redis.Cmder) error {
	var argv []any
	for _, cmd := range cmds {
		argv = append(argv, len(cmd.Args()))
		argv = append(argv, cmd.Args()...)
	}
	replies, err := readScript.Run(ctx, c, keys, argv...).Slice()
	if err != nil {
		return err
	}
	if len(replies) != len(cmds) {
		return fmt.Errorf("lua: read: %d replies to %d commands", len(replies), len(cmds))
	}
	for i, cmd := range cmds {
		if err := setReply(cmd, replies[i]); err != nil {
			cmd.SetErr(fmt.Errorf("lua: read: %s: %w", cmd.Name(), err))
		}
	}
	return nil
}

func setReply(cmd redis.Cmder, v any) error {
	if err, ok := v.(error); ok {
		cmd.SetErr(err)
		return nil
	}
	if v == nil {
		cmd.SetErr(redis.Nil)
		return nil
	}
	switch cmd := cmd.(type) {
	case *redis.StringCmd:
		cmd.SetVal(fmt.Sprint(v))
	case *redis.IntCmd:
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("reply %T, want an integer", v)
		}
		cmd.SetVal(n)
	case *redis.StringSliceCmd:
		ss, err := stringsOf(v)
		cmd.SetVal(ss)
		return err
	case *redis.MapStringStringCmd:
		ss, err := stringsOf(v)
		m := make(map[string]string, len(ss)/2)
		for i := 0; i+1 < len(ss); i += 2 {
			m[ss[i]] = ss[i+1]
		}
		cmd.SetVal(m)
		return err
	case *redis.ZSliceCmd:
		ss, err := stringsOf(v)
		zs := make([]redis.Z, 0, len(ss)/2)
		for i := 0; i+1 < len(ss) && err == nil; i += 2 {
			var score float64
			score, err = strconv.ParseFloat(ss[i+1], 64)
			zs = append(zs, redis.Z{Member: ss[i], Score: score})
		}
		cmd.SetVal(zs)
		return err
	case *redis.TimeCmd:
		ss, err := stringsOf(v)
		if err != nil || len(ss) != 2 {
			return fmt.Errorf("reply %v, want seconds and microseconds", v)
		}
		sec, err1 := strconv.ParseInt(ss[0], 10, 64)
		usec, err2 := strconv.ParseInt(ss[1], 10, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("reply %v, want seconds and microseconds", v)
		}
		cmd.SetVal(time.Unix(sec, usec*1000))
	default:
		return fmt.Errorf("replies of %T are not supported", cmd)
	}
	return nil
}

// stringsOf reads an array reply of strings.
func stringsOf(v any) ([]string, error) {
	vs, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("reply %T, want an array", v)
	}
	ss := make([]string, len(vs))
	for i, e := range vs {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("element %d is %T, want a string", i, e)
		}
		ss[i] = s
	}
	return ss, nil
}
