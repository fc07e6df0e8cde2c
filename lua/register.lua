-- register.lua: add executors to the pool, as many as the caller names in
-- one call; idempotent.
--
-- KEYS: see lib.lua.
-- ARGV: url, labels (a JSON object, or '' for none); the two repeated once
-- per executor.
-- Returns: one status per executor, in ARGV's order: 'added' |
-- 'already_registered'. Registering an executor that is draining cancels
-- the drain: it stays and returns at its release.

local now = now_ms()
local out = {}
for i = 1, #ARGV, 2 do
  local url, labels = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', K_EXECUTORS, url) == 1 then
    redis.call('SREM', K_DRAINING, url)
    out[#out + 1] = 'already_registered'
  else
    local record = { added_at = now }
    if labels ~= '' then
      record.labels = cjson.decode(labels)
    end
    redis.call('HSET', K_EXECUTORS, url, cjson.encode(record))
    redis.call('ZADD', K_AVAILABLE, now, url)
    out[#out + 1] = 'added'
  end
end
return out
