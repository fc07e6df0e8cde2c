#!lua flags=no-writes
-- counts.lua: how many executors are in each state, without walking the pool.
--
-- KEYS: see lib.lua.
-- ARGV: none.
-- Returns: {registered, available, leased, expired, draining, waiters,
-- quarantined, lost}. The states available, leased, draining, quarantined
-- and lost are exclusive and add up to registered: leased counts live and
-- expired leases of executors not draining (a quarantined executor still
-- serving its eval among them), quarantined those out of service and idle.
-- expired counts the leases past their deadline, of any state. O(log N),
-- plus one lookup per quarantined executor.

local registered = redis.call('HLEN', K_EXECUTORS)
local available = redis.call('ZCARD', K_AVAILABLE)
local leases = redis.call('ZCARD', K_DEADLINES)
local draining = redis.call('SCARD', K_DRAINING)
local quarantined = idle_quarantined()
return {
  registered,
  available,
  leases - draining,
  redis.call('ZCOUNT', K_DEADLINES, '-inf', now_ms()),
  draining,
  redis.call('HLEN', K_WAITING),
  quarantined,
  math.max(0, registered - available - leases - quarantined),
}
