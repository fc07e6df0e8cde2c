-- lib.lua: shared prelude, prepended to every evalpool script.
--
-- Every script receives the same KEYS, all under one hash tag
-- (evalpool:{<pool>}:...) so that a script touches a single cluster slot:
--   KEYS[1] executors  HASH  url -> executor record JSON {added_at, labels?,
--                            releases?, double_releases?, stale_releases?}
--   KEYS[2] available  ZSET  url -> ms when it last became available
--   KEYS[3] leases     HASH  url -> lease record JSON {token, eval_id, fence,
--                            acquired_at, available_since}
--   KEYS[4] deadlines  ZSET  url -> lease deadline (ms)
--   KEYS[5] holders    HASH  eval_id -> url (one lease per eval, O(1) re-entry)
--   KEYS[6] draining   SET   urls deregistered while leased
--   KEYS[7] fence      STRING counter, INCR on every acquire, never below now (ms)
--
-- Time is Redis's own (TIME), never the caller's clock.

local K_EXECUTORS = KEYS[1]
local K_AVAILABLE = KEYS[2]
local K_LEASES = KEYS[3]
local K_DEADLINES = KEYS[4]
local K_HOLDERS = KEYS[5]
local K_DRAINING = KEYS[6]
local K_FENCE = KEYS[7]

-- Refuse to touch a pool whose keys hold data of another kind, before any
-- write: Redis does not roll a script back, so a WRONGTYPE half way through
-- would leave the pool half changed. Seven O(1) TYPE calls.
local KEY_TYPES = { 'hash', 'zset', 'hash', 'zset', 'hash', 'set', 'string' }
for i, want in ipairs(KEY_TYPES) do
  local got = redis.call('TYPE', KEYS[i]).ok
  if got ~= 'none' and got ~= want then
    return redis.error_reply('EVALPOOL_FOREIGN_DATA ' .. KEYS[i] .. ' holds a ' .. got .. ', not a ' .. want)
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- end_lease drops the lease of url and returns the executor to the pool, or
-- removes it when it was deregistered while leased. It returns 1 when the
-- executor was removed, 0 when it became available.
local function end_lease(url, now)
  local raw = redis.call('HGET', K_LEASES, url)
  redis.call('HDEL', K_LEASES, url)
  redis.call('ZREM', K_DEADLINES, url)
  if raw then
    local eval_id = cjson.decode(raw).eval_id
    if redis.call('HGET', K_HOLDERS, eval_id) == url then
      redis.call('HDEL', K_HOLDERS, eval_id)
    end
  end
  if redis.call('SREM', K_DRAINING, url) == 1 then
    redis.call('HDEL', K_EXECUTORS, url)
    return 1
  end
  if redis.call('HEXISTS', K_EXECUTORS, url) == 1 then
    redis.call('ZADD', K_AVAILABLE, now, url)
  end
  return 0
end

-- reclaim_expired ends at most limit leases whose deadline has passed, the
-- oldest first, so that one call never walks the whole pool.
local function reclaim_expired(now, limit)
  local expired = redis.call('ZRANGE', K_DEADLINES, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, url in ipairs(expired) do
    end_lease(url, now)
  end
  return #expired
end
