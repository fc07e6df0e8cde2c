-- acquire.lua: lease an executor to an eval.
--
-- KEYS: see lib.lua.
-- ARGV[1] eval_id
-- ARGV[2] token: a fresh random token for the new lease
-- ARGV[3] ttl in ms
-- ARGV[4] how many expired leases to reclaim first, at most
-- ARGV[5] grace in ms: a lease is reclaimed only this long after its deadline
-- Returns: nil when no executor is free, else
--   {url, token, fence, deadline_ms, acquired_at_ms, available_since_ms, reentered}
-- Fails with EVALPOOL_NO_POOL when the pool's epoch marker is missing: the
-- pool was never created, or its data was lost (FLUSHALL, eviction).
--
-- Acquire is re-entrant per eval: an eval that still holds its executor (its
-- lease not yet reclaimed, the executor not draining) gets it back under the
-- new token and a higher fence, so that the older attempt can neither renew
-- nor release it and the executor refuses it. The holders index is believed
-- only when the lease it points to is this eval's.

local eval_id, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', K_EPOCH) == 0 then
  return redis.error_reply('EVALPOOL_NO_POOL the pool has no epoch marker: never created, or its data was lost')
end
-- INCR fails on a fence that is not an integer, and Redis would not roll
-- back the ZPOPMIN before it: refuse first, so no executor is dropped.
local fence_value = redis.call('GET', K_FENCE)
if fence_value and not string.match(fence_value, '^%-?%d+$') then
  return redis.error_reply('EVALPOOL_FOREIGN_DATA ' .. K_FENCE .. ' holds ' .. string.format('%q', fence_value) .. ', not an integer')
end
local now = now_ms()
reclaim_expired(now, tonumber(ARGV[4]), tonumber(ARGV[5]))

local function grant(url, available_since, reentered)
  -- The fence never falls below the clock in ms, so that a Redis that lost
  -- its data (no persistence) still hands out fences above those executors
  -- have already seen, unless acquires outran 1,000 a second for long.
  local fence = redis.call('INCR', K_FENCE)
  if fence < now then
    fence = now
    redis.call('SET', K_FENCE, fence)
  end
  local deadline = now + ttl
  redis.call('HSET', K_LEASES, url, cjson.encode({
    token = token, eval_id = eval_id, fence = fence,
    acquired_at = now, available_since = available_since,
  }))
  redis.call('ZADD', K_DEADLINES, deadline, url)
  redis.call('HSET', K_HOLDERS, eval_id, url)
  return { url, token, fence, deadline, now, available_since, reentered }
end

local held = redis.call('HGET', K_HOLDERS, eval_id)
if held then
  local lease = lease_of(held)
  if lease and lease.eval_id == eval_id and redis.call('HEXISTS', K_EXECUTORS, held) == 1 then
    if redis.call('SISMEMBER', K_DRAINING, held) == 0 then
      -- Its own executor, live or expired within the grace: nobody else can
      -- hold it, and the higher fence makes the executor drop the older
      -- attempt.
      return grant(held, tonumber(lease.available_since) or now, 1)
    end
    -- Draining: never handed out again, not even to its holder. Ending the
    -- lease removes the executor, so the older attempt loses it too.
    end_lease(held, now)
  elseif not lease or lease.eval_id ~= eval_id then
    -- A stale entry: the lease it points to is gone or another eval's.
    redis.call('HDEL', K_HOLDERS, eval_id)
  end
end

-- Pop the executor idle longest. An entry that is not a registered, unleased,
-- undrained executor (only foreign writes or lost keys make one) is dropped,
-- never granted: handing out a leased executor would double-book it.
for _ = 1, 16 do
  local popped = redis.call('ZPOPMIN', K_AVAILABLE)
  if #popped == 0 then
    return nil
  end
  local url = popped[1]
  if redis.call('HEXISTS', K_EXECUTORS, url) == 1
      and redis.call('HEXISTS', K_LEASES, url) == 0
      and redis.call('SISMEMBER', K_DRAINING, url) == 0 then
    return grant(url, tonumber(popped[2]), 0)
  end
end
return nil
