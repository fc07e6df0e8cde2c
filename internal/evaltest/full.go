package evaltest

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// FullRedisArgs start a redis-server with a small maxmemory that evicts
// nothing, for FillRedis.
var FullRedisArgs = []string{"--maxmemory", "8mb", "--maxmemory-policy", "noeviction"}

// FillRedis fills c's Redis to its maxmemory with a key of its own, outside
// every evalpool prefix, until Redis refuses a write (OOM). It returns the
// function that deletes that key, which the test's end calls too.
func FillRedis(t testing.TB, c *redis.Client) (free func()) {
	t.Helper()
	const key = "foreign:ballast"
	chunk := strings.Repeat("x", 64<<10)
	for i := 0; ; i++ {
		err := c.Append(t.Context(), key, chunk).Err()
		if err != nil && strings.HasPrefix(err.Error(), "OOM") {
			break
		}
		if err != nil {
			t.Fatalf("evaltest: fill Redis: %v", err)
		}
		if i > 1<<14 {
			t.Fatal("evaltest: fill Redis: no OOM after 1 GiB: is maxmemory set?")
		}
	}
	// Used memory moves a little around the limit (client buffers come
	// and go), which would let a write through now and then: set the limit
	// a margin below it, far above what is left once the ballast goes.
	used := Info(t, c, "memory", "used_memory")[0]
	if err := c.ConfigSet(t.Context(), "maxmemory", strconv.FormatInt(int64(used)-1<<20, 10)).Err(); err != nil {
		t.Fatalf("evaltest: fill Redis: %v", err)
	}
	free = func() {
		if err := c.Del(t.Context(), key).Err(); err != nil {
			t.Errorf("evaltest: free Redis: %v", err)
		}
	}
	t.Cleanup(func() { _ = c.Del(context.Background(), key).Err() })
	return free
}
