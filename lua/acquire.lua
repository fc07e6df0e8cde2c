-- acquire.lua: lease an executor to an eval.
--
-- KEYS: see lib.lua.
-- ARGV[1] eval_id
-- ARGV[2] token: a fresh random token for the new lease
-- ARGV[3] ttl in ms
-- ARGV[4] how many expired leases to reclaim first, at most
-- Returns: nil when no executor is free, else
--   {url, token, fence, deadline_ms, acquired_at_ms, available_since_ms, reentered}
--
-- Acquire is re-entrant per eval: an eval that already holds a live lease gets
-- the same executor back under the new token and a higher fence, so the older
-- attempt can neither renew nor release it and the executor refuses it.

local eval_id, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
reclaim_expired(now, tonumber(ARGV[4]))

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
  local lease = cjson.decode(redis.call('HGET', K_LEASES, held))
  if (tonumber(redis.call('ZSCORE', K_DEADLINES, held)) or 0) > now then
    return grant(held, lease.available_since, 1)
  end
  end_lease(held, now)
end

local popped = redis.call('ZPOPMIN', K_AVAILABLE)
if #popped == 0 then
  return nil
end
return grant(popped[1], tonumber(popped[2]), 0)
