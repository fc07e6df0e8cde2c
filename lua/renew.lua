-- renew.lua: push a live lease's deadline to now + ttl.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- ARGV[2] token
-- ARGV[3] ttl in ms
-- Returns: the new deadline in ms, or 0 when the lease is lost: released,
-- reclaimed, taken over by a newer attempt, or past its deadline (an expired
-- lease is never revived, even before the reaper has seen it).

local url, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('HGET', K_LEASES, url)
if not raw or cjson.decode(raw).token ~= token then
  return 0
end
local now = now_ms()
local deadline = tonumber(redis.call('ZSCORE', K_DEADLINES, url))
if not deadline or deadline <= now then
  return 0
end
redis.call('ZADD', K_DEADLINES, now + ttl, url)
return now + ttl
