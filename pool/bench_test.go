package pool

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
)

var benchSizes = []int{10, 1000, 100_000}

// BenchmarkAcquireRelease measures one acquire plus one release on a pool of
// n idle executors: O(log n) sorted-set work, so flat in n.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, n := range benchSizes {
		b.Run("executors="+strconv.Itoa(n), func(b *testing.B) {
			client := evaltest.Client(b)
			p, err := New(client, Options{Name: evaltest.Pool(b, client)})
			if err != nil {
				b.Fatal(err)
			}
			execs := make([]Executor, n)
			for i := range execs {
				execs[i].URL = fmt.Sprintf("http://10.0.%d.%d:8080", i/256, i%256)
			}
			if _, err := p.Register(b.Context(), execs...); err != nil {
				b.Fatal(err)
			}
			ctx := b.Context()
			b.ResetTimer()
			for i := range b.N {
				l, err := p.Acquire(ctx, "eval-"+strconv.Itoa(i), time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				if r, err := p.Release(ctx, l, "bench"); err != nil || r.Outcome != Released {
					b.Fatal(r, err)
				}
			}
		})
	}
}

// originalRelease is the release of the talk that started evalpool, kept only
// to measure against: it scans the whole available LIST and decodes every
// entry on every release, O(pool size) inside Redis.
var originalRelease = redis.NewScript(`
local busy_key, available_key, executor_url, executor_data = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local was_busy = redis.call('del', busy_key)
local available_list = redis.call('lrange', available_key, 0, -1)
for i, raw in ipairs(available_list) do
  local item = cjson.decode(raw)
  if item.url == executor_url then
    return {was_busy, 0, "already_in_pool"}
  end
end
if was_busy == 1 then
  redis.call('lpush', available_key, executor_data)
  return {was_busy, 1, "released"}
end
return {was_busy, 0, "not_busy"}
`)

// BenchmarkOriginalAcquireRelease measures the original design on the same
// Redis: RPOP then SETEX to acquire, the scanning script to release.
func BenchmarkOriginalAcquireRelease(b *testing.B) {
	for _, n := range benchSizes {
		b.Run("executors="+strconv.Itoa(n), func(b *testing.B) {
			client := evaltest.Client(b)
			prefix := "evalpool:{" + evaltest.Pool(b, client) + "}:"
			available := prefix + "available_list"
			ctx := b.Context()
			if err := loadOriginal(ctx, client, available, n); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				raw, err := client.RPop(ctx, available).Result()
				if err != nil {
					b.Fatal(err)
				}
				var item struct {
					URL string `json:"url"`
				}
				if err := json.Unmarshal([]byte(raw), &item); err != nil {
					b.Fatal(err)
				}
				busy := prefix + "busy:" + item.URL
				if err := client.SetEx(ctx, busy, "eval-"+strconv.Itoa(i), 600*time.Second).Err(); err != nil {
					b.Fatal(err)
				}
				res, err := originalRelease.Run(ctx, client, []string{busy, available}, item.URL, raw).Slice()
				if err != nil || res[2] != "released" {
					b.Fatal(res, err)
				}
			}
		})
	}
}

func loadOriginal(ctx context.Context, c *redis.Client, key string, n int) error {
	for start := 0; start < n; start += 1000 {
		_, err := c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := start; i < min(start+1000, n); i++ {
				item, _ := json.Marshal(map[string]string{"url": fmt.Sprintf("http://10.0.%d.%d:8080", i/256, i%256)})
				pipe.LPush(ctx, key, item)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
