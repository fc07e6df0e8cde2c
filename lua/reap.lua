#!lua flags=allow-oom
-- reap.lua: end leases whose deadline passed more than the grace ago,
-- oldest first.
--
-- KEYS: see lib.lua.
-- ARGV[1] how many to reclaim at most in this call
-- Returns: the number reclaimed; the caller repeats while it equals ARGV[1],
-- so that Redis is never blocked by a long walk.

local now = now_ms()
-- A registered executor is free, leased or quarantined. One that is none
-- (an index lost with a key, or an older release's write that failed half
-- way) would be held for ever: the walk puts it back where its record says
-- it belongs. A lease gets a deadline its TTL from now, never before the
-- real one (its holder renews within a TTL; an older release's lease,
-- whose TTL is unknown, gets LOST_TTL); a quarantine its next probe now; a
-- drain ends; the rest are freed. It walks the records only when those
-- indexes count fewer executors than are registered (a quarantined one
-- once, leased or not).
local LOST_TTL = 3600000
if redis.call('ZCARD', K_DEADLINES) + redis.call('ZCARD', K_AVAILABLE) + idle_quarantined()
    < redis.call('HLEN', K_EXECUTORS) then
  for _, url in ipairs(redis.call('HKEYS', K_EXECUTORS)) do
    if not redis.call('ZSCORE', K_DEADLINES, url) and not redis.call('ZSCORE', K_AVAILABLE, url)
        and not redis.call('ZSCORE', K_QUARANTINE, url) then
      local lease, record = lease_of(url)
      if lease then
        redis.call('ZADD', K_DEADLINES, now + (tonumber(lease.ttl) or LOST_TTL), url)
      elseif record and tonumber(record.quarantined_at) then
        redis.call('ZADD', K_QUARANTINE, now, url)
      elseif record and record.draining then
        end_lease(url, now, 'drained', nil, record)
      elseif record then
        return_to_pool(url, now, record)
      end
    end
  end
end
-- The outlived tokens are kept to their cap here; the released tokens
-- that releases up to 4d63ceb kept are deleted.
redis.call('ZREMRANGEBYRANK', K_OUTLIVED, 0, -OUTLIVED_LEN - 1)
redis.call('DEL', PREFIX .. 'released')
local reclaimed = reclaim_expired(now, tonumber(ARGV[1]))
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
