package pool

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// RaiseFence only raises the fence an executor's record keeps, to a fence
// no further ahead of Redis's clock than MaxFenceAhead, and the executor's
// next grant is above it. A fence past the bound, or not positive, changes
// nothing, and so does an executor that is not registered.
func TestRaiseFence(t *testing.T) {
	t.Parallel()
	now := time.Now().UnixMilli()
	ahead := now + (MaxFenceAhead - time.Hour).Milliseconds()
	tests := []struct {
		name    string
		url     string
		fences  []int64 // raised in turn
		raised  []bool
		wantErr error
		next    int64 // the next grant's fence is at least this
	}{
		{"a day ahead, less an hour", "http://e1", []int64{ahead}, []bool{true}, nil, ahead + 1},
		{"only raises", "http://e1", []int64{ahead, ahead - 1000, ahead}, []bool{true, false, false}, nil, ahead + 1},
		{"below the clock floor", "http://e1", []int64{5}, []bool{true}, nil, now},
		{"an executor not registered", "http://nobody", []int64{ahead}, []bool{false}, nil, now},
		{"the attacker's", "http://e1", []int64{9000000000000000000}, []bool{false}, ErrInvalid, now},
		{"past the bound", "http://e1", []int64{now + (MaxFenceAhead + time.Hour).Milliseconds()}, []bool{false}, ErrInvalid, now},
		{"zero", "http://e1", []int64{0}, []bool{false}, ErrInvalid, now},
		{"negative", "http://e1", []int64{-1}, []bool{false}, ErrInvalid, now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			before := b.client.HGetAll(t.Context(), p.keys.Executors()).Val()
			for i, f := range tt.fences {
				raised, err := p.RaiseFence(t.Context(), tt.url, f)
				if raised != tt.raised[i] || !errors.Is(err, tt.wantErr) {
					t.Fatalf("RaiseFence(%d) = %v, %v; want %v, %v", f, raised, err, tt.raised[i], tt.wantErr)
				}
			}
			if after := b.client.HGetAll(t.Context(), p.keys.Executors()).Val(); !slices.Contains(tt.raised, true) && !maps.Equal(before, after) {
				t.Fatalf("a raise refused or of no executor wrote the records: %v, was %v", after, before)
			}
			l, err := p.Acquire(t.Context(), "e", time.Minute, AcquireArgs{})
			if err != nil || l.Fence < tt.next {
				t.Fatalf("next grant: %+v, %v; want a fence of at least %d", l, err, tt.next)
			}
		})
	}
	t.Run("foreign data", func(t *testing.T) {
		t.Parallel()
		p, b := setup(t)
		if err := b.client.HSet(t.Context(), p.keys.Executors(), "http://e1", "not a record").Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.RaiseFence(t.Context(), "http://e1", now); !errors.Is(err, ErrForeignData) {
			t.Fatalf("RaiseFence over foreign data = %v, want ErrForeignData", err)
		}
		if got := b.client.HGet(t.Context(), p.keys.Executors(), "http://e1").Val(); got != "not a record" {
			t.Fatalf("RaiseFence over foreign data wrote %q", got)
		}
	})
}

// A record written before each kept its executor's fence starts from the
// pool-wide counter those releases kept, so that its next grant is above
// every fence they granted.
func TestFenceStartsFromAnOlderCounter(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1")
	counter := time.Now().Add(time.Hour).UnixMilli()
	if err := b.client.Set(t.Context(), p.keys.Fence(), counter, 0).Err(); err != nil {
		t.Fatal(err)
	}
	l := acquire(t, p, "e", time.Minute)
	if l.Fence != counter+1 {
		t.Fatalf("first grant's fence = %d, want the counter's next, %d", l.Fence, counter+1)
	}
	release(t, p, l, Released)
	if l = acquire(t, p, "e", time.Minute); l.Fence != counter+2 {
		t.Fatalf("second grant's fence = %d, want the record's next, %d", l.Fence, counter+2)
	}
}

// Fences are the executor's, not the pool's: a pool granting faster than
// 1,000 leases a second does not run any executor's fence ahead of Redis's
// clock, so that after a loss of data (FLUSHALL, a rewind) every
// executor's next fence, from the clock floor, is above every one it saw.
// A pool-wide counter ran ahead by the excess rate, and the executors then
// refused the pool's grants as stale until the clock caught up.
func TestFencesStayAboveAfterDataLossAtHighRate(t *testing.T) {
	t.Parallel()
	urls := make([]string, 100)
	for i := range urls {
		urls[i] = fmt.Sprintf("http://e%d", i)
	}
	// A server of its own, for its FLUSHALL.
	client := redis.NewClient(&redis.Options{Addr: evaltest.StartT(t, evaltest.Options{}).Addr})
	t.Cleanup(func() { _ = client.Close() })
	p := poolOn(t, client, "fences")
	register(t, p, urls...)
	ctx := t.Context()
	seen := make(map[string]int64)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 600 {
				l, err := p.Acquire(ctx, fmt.Sprintf("w%d-%d", w, i), time.Minute, AcquireArgs{})
				if errors.Is(err, ErrNoExecutor) {
					continue
				}
				if err == nil {
					_, err = p.Release(ctx, l, ReleaseArgs{Path: "done"})
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[l.URL] = max(seen[l.URL], l.Fence)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if err := client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	register(t, p, urls...)
	for i := range urls {
		l := acquire(t, p, fmt.Sprint("after-", i), time.Minute)
		if l.Fence <= seen[l.URL] {
			t.Fatalf("after the data loss %s is granted fence %d, not above %d, which it saw before", l.URL, l.Fence, seen[l.URL])
		}
	}
}
