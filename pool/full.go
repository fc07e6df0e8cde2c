package pool

import "github.com/evalpool/evalpool/lua"

// ErrRedisFull means Redis refused a write because it is at its maxmemory
// (a pool's Redis evicts nothing: see the worker's eviction check). Reads,
// releases, renewals and reaps still work then, so leases still end; what
// would grow memory (an acquire, a register, a submitted run, the record of
// an eval's end) is refused whole until memory is freed or maxmemory
// raised. The ends not recorded meanwhile are recorded later (see
// run.Store.Reconcile).
var ErrRedisFull = lua.ErrRedisFull

// RedisFull returns ErrRedisFull for Redis's refusal of a write at
// maxmemory (OOM, alone or behind an aborted MULTI), and err otherwise.
func RedisFull(err error) error { return lua.Full(err) }
