-- register.lua: add an executor to the pool; idempotent.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- ARGV[2] labels as a JSON object, or '' for none
-- Returns: 'added' | 'already_registered'. Registering an executor that is
-- draining cancels the drain: it stays and returns at its release.

local url = ARGV[1]
if redis.call('HEXISTS', K_EXECUTORS, url) == 1 then
  redis.call('SREM', K_DRAINING, url)
  return 'already_registered'
end
local now = now_ms()
local record = { added_at = now }
if ARGV[2] ~= '' then
  record.labels = cjson.decode(ARGV[2])
end
redis.call('HSET', K_EXECUTORS, url, cjson.encode(record))
redis.call('ZADD', K_AVAILABLE, now, url)
return 'added'
