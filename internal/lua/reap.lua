#!lua flags=allow-oom
-- reap.lua: end leases whose deadline passed more than the grace ago,
-- oldest first.
--
-- KEYS: see lib.lua.
-- ARGV[1] how many to reclaim at most in this call
-- ARGV[2] grace in ms (see reclaim_expired in lib.lua)
-- Returns: the number reclaimed; the caller repeats while it equals ARGV[1],
-- so that Redis is never blocked by a long walk.

local bad = foreign(ALL_KEYS)
if bad then
  return redis.error_reply(bad)
end
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
return (reclaim_expired(now, tonumber(ARGV[1]), tonumber(ARGV[2])))
