package lua_test

import (
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
