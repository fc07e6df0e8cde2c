package lua_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

// TestBothForms runs scripts on a server that reads their flags line (Redis
// ≥ 7) and on one that refuses it (miniredis, as Redis 6.2): each runs, the
// first in its flagged form, the second in its plain one, and Read answers
// on both.
func TestBothForms(t *testing.T) {
	t.Parallel()
	mini := miniredis.RunT(t)
	servers := map[string]*redis.Client{
		"redis":     evaltest.Client(t),
		"miniredis": redis.NewClient(&redis.Options{Addr: mini.Addr()}),
	}
	t.Cleanup(func() { _ = servers["miniredis"].Close() })
	for name, c := range servers {
		t.Run(name, func(t *testing.T) {
			k := keys.ForPool(evaltest.Pool(t, c))
			if n, err := lua.Reap.Run(t.Context(), c, k.Script(), 16, 1000).Int(); err != nil || n != 0 {
				t.Fatalf("reap of an empty pool: %d, %v", n, err)
			}
			if err := lua.Counts.Load(t.Context(), c).Err(); err != nil {
				t.Fatalf("load: %v", err)
			}
			ok, err := lua.Counts.Exists(t.Context(), c).Result()
			if err != nil || !ok[0] {
				t.Fatalf("the form for this server is not cached: %v, %v", ok, err)
			}
			flagged, err := c.ScriptExists(t.Context(), lua.Counts.Hash()).Result()
			if err != nil || flagged[0] != (name == "redis") {
				t.Errorf("flagged form cached: %v, %v; want it on Redis ≥ 7 only", flagged, err)
			}
			if err := c.HSet(t.Context(), k.Executors(), "u", "{}").Err(); err != nil {
				t.Fatal(err)
			}
			execs := redis.NewMapStringStringCmd(t.Context(), "hgetall", k.Executors())
			fence := redis.NewStringCmd(t.Context(), "get", k.Fence())
			now := redis.NewTimeCmd(t.Context(), "time")
			if err := lua.Read(t.Context(), c, k.Script(), execs, fence, now); err != nil {
				t.Fatal(err)
			}
			if execs.Val()["u"] != "{}" || fence.Err() != redis.Nil || time.Since(now.Val()).Abs() > time.Hour {
				t.Errorf("read: %v, %v, %v", execs.Val(), fence.Err(), now.Val())
			}
		})
	}
}

// TestLibrary: on Redis ≥ 7 the pool's scripts run as one function library,
// loaded by the first call that finds it missing (after a FUNCTION FLUSH
// too), each function with its script's flags; miniredis, which serves no
// functions, runs the same code as a script.
func TestLibrary(t *testing.T) {
	t.Parallel()
	c := evaltest.Client(t)
	k := keys.ForPool("library")
	for range 2 {
		if err := c.FunctionFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		if err := lua.Counts.Run(t.Context(), c, k.Script()).Err(); err != nil {
			t.Fatalf("counts as a function: %v", err)
		}
		libs, err := c.FunctionList(t.Context(), redis.FunctionListQuery{}).Result()
		if err != nil || len(libs) != 1 {
			t.Fatalf("FUNCTION LIST = %+v, %v; want the one library", libs, err)
		}
		flags := map[string][]string{}
		for _, f := range libs[0].Functions {
			flags[strings.TrimPrefix(f.Name, libs[0].Name+"_")] = f.Flags
		}
		want := map[string][]string{
			"register": {}, "migrate": {}, "deregister": {"allow-oom"}, "acquire": {}, "renew": {"allow-oom"},
			"release": {"allow-oom"}, "reap": {"allow-oom"}, "counts": {"no-writes"}, "leave": {"allow-oom"},
			"label": {}, "quarantine": {}, "probe": {}, "clock": {"allow-oom"},
		}
		if len(flags) != len(want) {
			t.Fatalf("library %s holds %v, want %d functions", libs[0].Name, flags, len(want))
		}
		for name, f := range want {
			if got, ok := flags[name]; !ok || !slices.Equal(got, f) {
				t.Errorf("function %s: flags %v (present %v), want %v", name, got, ok, f)
			}
		}
	}
	mini := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
	t.Cleanup(func() { _ = mini.Close() })
	if err := lua.Counts.Run(t.Context(), mini, k.Script()).Err(); err != nil {
		t.Fatalf("counts as a script on miniredis: %v", err)
	}
}
