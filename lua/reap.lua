#!lua flags=allow-oom
-- reap.lua: end leases whose deadline passed more than the grace ago,
-- oldest first.
--
-- KEYS: see lib.lua.
-- ARGV[1] how many to reclaim at most in this call
-- ARGV[2] grace in ms (see reclaim_expired in lib.lua)
-- Returns: the number reclaimed; the caller repeats while it equals ARGV[1],
-- so that Redis is never blocked by a long walk.

local now = now_ms()
-- A lease without a deadline (its entry deleted or evicted) would be held
-- for ever: give it one that has passed, so that it is reclaimed after the
-- grace. This walks the leases, but only when the counts disagree.
if redis.call('HLEN', K_LEASES) > redis.call('ZCARD', K_DEADLINES) then
  for _, url in ipairs(redis.call('HKEYS', K_LEASES)) do
    if not redis.call('ZSCORE', K_DEADLINES, url) then
      redis.call('ZADD', K_DEADLINES, now, url)
    end
  end
end
-- Entries whose lease is gone (the leases hash deleted or evicted) would
-- fail Check for ever: a holder whose lease is not its eval's, and the
-- deadline of an executor already back (registering again repaired it; a
-- lost one's deadline stays, and its reclaim frees it). A walk again, only
-- when the counts disagree.
local leases = redis.call('HLEN', K_LEASES)
if redis.call('ZCARD', K_DEADLINES) > leases then
  for _, url in ipairs(redis.call('ZRANGE', K_DEADLINES, 0, -1)) do
    if redis.call('HEXISTS', K_LEASES, url) == 0
        and (redis.call('ZSCORE', K_AVAILABLE, url) or redis.call('ZSCORE', K_QUARANTINE, url)) then
      redis.call('ZREM', K_DEADLINES, url)
    end
  end
end
if redis.call('HLEN', K_HOLDERS) > leases then
  local holders = redis.call('HGETALL', K_HOLDERS)
  for i = 1, #holders, 2 do
    local lease = lease_of(holders[i + 1])
    if not lease or lease.eval_id ~= holders[i] then
      redis.call('HDEL', K_HOLDERS, holders[i])
    end
  end
end
-- The released tokens are kept to their cap here, not by every release.
redis.call('ZREMRANGEBYRANK', K_RELEASED, 0, -RELEASED_LEN - 1)
return (reclaim_expired(now, tonumber(ARGV[1]), tonumber(ARGV[2])))
