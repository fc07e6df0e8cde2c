package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
)

var benchSizes = []int{10, 1000, 10_000, 100_000}

// design is one way to keep a pool: ours, or the original talk's.
type design struct {
	name string
	// setup fills a pool of n idle executors and returns acquire+release of
	// one executor by one eval.
	setup func(b *testing.B, n int) func(ctx context.Context, i int64) error
}

var designs = []design{
	{"evalpool", func(b *testing.B, n int) func(context.Context, int64) error {
		p := benchPool(b, n)
		return func(ctx context.Context, i int64) error {
			l, err := p.Acquire(ctx, "eval-"+strconv.FormatInt(i, 10), time.Minute, AcquireArgs{})
			if errors.Is(err, ErrNoExecutor) {
				return nil // a busy pool under parallel load: nothing to release
			}
			if err != nil {
				return err
			}
			r, err := p.Release(ctx, l, ReleaseArgs{Path: "bench"})
			if err == nil && r.Outcome != Released {
				err = fmt.Errorf("release: %s", r.Outcome)
			}
			return err
		}
	}},
	// labeled: the executors spread over 10 label sets (two labels each, so
	// each sits in three indexes), every eval requiring one of the sets.
	{"labeled", func(b *testing.B, n int) func(context.Context, int64) error {
		client := evaltest.Client(b)
		p, err := New(client, Options{Name: evaltest.Pool(b, client)})
		if err != nil {
			b.Fatal(err)
		}
		execs := make([]Executor, n)
		for i := range execs {
			execs[i] = Executor{URL: executorURL(i), Labels: map[string]string{"kind": fmt.Sprint("k", i%10), "tier": fmt.Sprint("t", i%10%2)}}
		}
		if _, err := p.Register(b.Context(), execs...); err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context, i int64) error {
			l, err := p.Acquire(ctx, "eval-"+strconv.FormatInt(i, 10), time.Minute, AcquireArgs{Require: map[string]string{"kind": fmt.Sprint("k", i%10)}})
			if errors.Is(err, ErrNoExecutor) {
				return nil
			}
			if err != nil {
				return err
			}
			r, err := p.Release(ctx, l, ReleaseArgs{Path: "bench"})
			if err == nil && r.Outcome != Released {
				err = fmt.Errorf("release: %s", r.Outcome)
			}
			return err
		}
	}},
	{"original", func(b *testing.B, n int) func(context.Context, int64) error {
		client := evaltest.Client(b)
		k := keys.ForPool(evaltest.Pool(b, client))
		available := k.Scratch("available_list")
		if err := loadOriginal(b.Context(), client, available, n); err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context, i int64) error {
			raw, err := client.RPop(ctx, available).Result()
			if errors.Is(err, redis.Nil) {
				return nil
			}
			if err != nil {
				return err
			}
			var item struct {
				URL string `json:"url"`
			}
			if err := json.Unmarshal([]byte(raw), &item); err != nil {
				return err
			}
			busy := k.Scratch("busy:" + item.URL)
			if err := client.SetEx(ctx, busy, "eval-"+strconv.FormatInt(i, 10), 600*time.Second).Err(); err != nil {
				return err
			}
			res, err := originalRelease.Run(ctx, client, []string{busy, available}, item.URL, raw).Slice()
			if err == nil && res[2] != "released" {
				err = fmt.Errorf("original release: %v", res)
			}
			return err
		}
	}},
}

// benchPool is a pool of its own with n idle executors.
func benchPool(b *testing.B, n int) *Pool {
	client := evaltest.Client(b)
	p, err := New(client, Options{Name: evaltest.Pool(b, client)})
	if err != nil {
		b.Fatal(err)
	}
	execs := make([]Executor, n)
	for i := range execs {
		execs[i].URL = executorURL(i)
	}
	if _, err := p.Register(b.Context(), execs...); err != nil {
		b.Fatal(err)
	}
	return p
}

func executorURL(i int) string { return fmt.Sprintf("http://10.0.%d.%d:8080", i/256, i%256) }

// BenchmarkAcquireRelease: one client, one acquire plus one release at a
// time, on a pool of n idle executors; p50 and p99 of the pair.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, d := range designs {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("design=%s/executors=%d", d.name, n), func(b *testing.B) {
				pair := d.setup(b, n)
				ctx := b.Context()
				took := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for i := range b.N {
					start := time.Now()
					if err := pair(ctx, int64(i)); err != nil {
						b.Fatal(err)
					}
					took = append(took, time.Since(start))
				}
				b.StopTimer()
				slices.Sort(took)
				b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(took[(len(took)-1)*99/100].Nanoseconds()), "p99-ns")
			})
		}
	}
}

// BenchmarkParallelAcquireRelease: eight clients at once, so that Redis,
// not the round trip, is what limits; pairs/s is the throughput.
func BenchmarkParallelAcquireRelease(b *testing.B) {
	for _, d := range designs {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("design=%s/executors=%d", d.name, n), func(b *testing.B) {
				pair := d.setup(b, n)
				ctx := b.Context()
				var next atomic.Int64
				b.SetParallelism(4) // × GOMAXPROCS 2 = 8 clients
				b.ResetTimer()
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := pair(ctx, next.Add(1)); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pairs/s")
			})
		}
	}
}

// BenchmarkRenew: a worker's heartbeat over its leases, one Renew per lease
// (a heartbeat per eval) or one RenewAll for all of them; per lease: time,
// and Redis's own CPU from INFO.
func BenchmarkRenew(b *testing.B) {
	for _, n := range []int{16, 256} {
		for _, batch := range []string{"each", "all"} {
			b.Run(fmt.Sprintf("leases=%d/batch=%s", n, batch), func(b *testing.B) {
				p := benchPool(b, n)
				rs := make([]Renewal, n)
				var err error
				for i := range rs {
					if rs[i].Lease, err = p.Acquire(b.Context(), "eval-"+strconv.Itoa(i), time.Hour, AcquireArgs{}); err != nil {
						b.Fatal(err)
					}
					rs[i].TTL = time.Hour
				}
				ctx := b.Context()
				cpu0 := evaltest.RedisCPU(b, p.client)
				b.ResetTimer()
				for range b.N {
					if batch == "all" {
						err = p.RenewAll(ctx, rs)
					} else {
						for _, r := range rs {
							if _, err = p.Renew(ctx, r.Lease, r.TTL); err != nil {
								break
							}
						}
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				leases := float64(b.N * n)
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/leases, "ns/lease")
				b.ReportMetric(1e9*(evaltest.RedisCPU(b, p.client)-cpu0)/leases, "redis-cpu-ns/lease")
			})
		}
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

func loadOriginal(ctx context.Context, c *redis.Client, key string, n int) error {
	for start := 0; start < n; start += 1000 {
		_, err := c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := start; i < min(start+1000, n); i++ {
				item, _ := json.Marshal(map[string]string{"url": executorURL(i)})
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
