package lua

import (
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrRedisFull is pool.ErrRedisFull, here so that the run package names it
// too.
var ErrRedisFull = errors.New("redis is full (used memory over maxmemory, which evicts nothing): free memory or raise maxmemory; until then no eval starts and nothing is submitted, but leases are still released and reclaimed")

// Full returns ErrRedisFull for Redis's refusal of a write at maxmemory
// (OOM, alone or behind an aborted MULTI), and err otherwise.
func Full(err error) error {
	if err != nil && (redis.HasErrorPrefix(err, "OOM") || strings.Contains(err.Error(), "OOM command not allowed")) {
		return ErrRedisFull
	}
	return err
}
