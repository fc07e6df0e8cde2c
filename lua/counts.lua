-- counts.lua: how many executors are in each state, without walking the pool.
--
-- KEYS: see lib.lua.
-- ARGV: none.
-- Returns: {registered, available, leased, expired, draining, waiters};
-- expired leases are counted among the leased too. O(log N).

return {
  redis.call('HLEN', K_EXECUTORS),
  redis.call('ZCARD', K_AVAILABLE),
  redis.call('HLEN', K_LEASES),
  redis.call('ZCOUNT', K_DEADLINES, '-inf', now_ms()),
  redis.call('SCARD', K_DRAINING),
  redis.call('ZCARD', K_WAITERS),
}
