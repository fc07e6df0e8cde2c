package pool

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/lua"
)

// MaxFenceAhead bounds how far ahead of Redis's clock in ms a fence passed
// to RaiseFence may be: the bound executors refuse fences beyond
// (executor.MaxFenceAhead), so a fence past it was granted by no pool.
const MaxFenceAhead = 24 * time.Hour

// RaiseFence raises the fence the executor at url keeps in its record to at
// least seen, the highest fence the executor says it has seen (the max_fence
// of its 409 stale_fence), so that its next grant passes. The fence only
// rises: one below it changes nothing, and so does an executor that is not
// registered. That repairs an executor that recorded a fence no grant of
// this pool reached (one sent by hand, or by a pool whose Redis lost its
// data faster than the clock floor covers), which would otherwise refuse
// every holder the pool hands it. A fence more than MaxFenceAhead ahead of
// Redis's clock is ErrInvalid and changes nothing. It reports whether the
// fence rose.
func (p *Pool) RaiseFence(ctx context.Context, url string, seen int64) (bool, error) {
	if seen <= 0 {
		return false, fmt.Errorf("%w: fence %d is not positive", ErrInvalid, seen)
	}
	n, err := lua.RaiseFence.Run(ctx, p.client, []string{p.keys.Executors()}, url, strconv.FormatInt(seen, 10), MaxFenceAhead.Milliseconds()).Int()
	if redis.HasErrorPrefix(err, "EVALPOOL_INVALID") {
		return false, fmt.Errorf("%w: %s", ErrInvalid, strings.TrimPrefix(err.Error(), "EVALPOOL_INVALID "))
	}
	if err != nil {
		return false, fmt.Errorf("pool %s: raise the fence of %s to %d: %w", p.name, url, seen, scriptErr(err))
	}
	return n == 1, nil
}
