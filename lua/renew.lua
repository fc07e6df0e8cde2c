#!lua flags=allow-oom
-- renew.lua: push live leases' deadlines to now + ttl, as many leases as the
-- caller holds in one call, so that a worker's heartbeat is one round trip
-- for all its leases. The work is one lookup per lease named, never a walk
-- of the pool.
--
-- KEYS: see lib.lua.
-- ARGV: url, token, ttl in ms; the three repeated once per lease.
-- Returns: one integer per lease, in ARGV's order: its new deadline in ms, or
-- 0 when the lease is lost: released, reclaimed, taken over by a newer
-- attempt, or past its deadline (an expired lease is never revived, even
-- before the reaper has seen it).

local now = now_ms()
local out = {}
for i = 1, #ARGV, 3 do
  local url, token, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local renewed = 0
  local lease = lease_of(url)
  if lease and lease.token == token then
    local deadline = tonumber(redis.call('ZSCORE', K_DEADLINES, url))
    if deadline and deadline > now then
      redis.call('ZADD', K_DEADLINES, now + ttl, url)
      renewed = now + ttl
    end
  end
  out[#out + 1] = renewed
end
return out
