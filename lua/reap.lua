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
-- grace. A registered executor is free, leased or quarantined, so this
-- walks the records only when those indexes count fewer. A deadline whose
-- lease is gone needs nothing: its reclaim frees the executor.
local leases = redis.call('ZCARD', K_DEADLINES)
if leases + redis.call('ZCARD', K_AVAILABLE) + redis.call('ZCARD', K_QUARANTINE) < redis.call('HLEN', K_EXECUTORS) then
  for _, url in ipairs(redis.call('HKEYS', K_EXECUTORS)) do
    if not redis.call('ZSCORE', K_DEADLINES, url) and lease_of(url) then
      redis.call('ZADD', K_DEADLINES, now, url)
    end
  end
end
-- The released tokens are kept to their cap here, not by every release.
redis.call('ZREMRANGEBYRANK', K_RELEASED, 0, -RELEASED_LEN - 1)
local reclaimed = reclaim_expired(now, tonumber(ARGV[1]), tonumber(ARGV[2]))
-- Holders whose lease is gone (lost with its record) would fail Check for
-- ever. A walk again, only when the counts disagree.
if redis.call('HLEN', K_HOLDERS) > redis.call('ZCARD', K_DEADLINES) then
  local holders = redis.call('HGETALL', K_HOLDERS)
  for i = 1, #holders, 2 do
    local lease = lease_of(holders[i + 1])
    if not lease or lease.eval_id ~= holders[i] then
      redis.call('HDEL', K_HOLDERS, holders[i])
    end
  end
end
return reclaimed
