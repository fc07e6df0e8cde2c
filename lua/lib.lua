-- lib.lua: shared prelude, prepended to every evalpool script.
--
-- Every script receives the same KEYS, all under one hash tag
-- (evalpool:{<pool>}:...) so that a script touches a single cluster slot:
--   KEYS[1] executors  HASH  url -> executor record JSON {added_at, labels?,
--                            instance_id?, releases?, double_releases?,
--                            stale_releases?}
--   KEYS[2] available  ZSET  url -> ms when it last became available
--   KEYS[3] leases     HASH  url -> lease record JSON {token, eval_id, fence,
--                            acquired_at, available_since}
--   KEYS[4] deadlines  ZSET  url -> lease deadline (ms)
--   KEYS[5] holders    HASH  eval_id -> url (one lease per eval, O(1) re-entry)
--   KEYS[6] draining   SET   urls deregistered while leased
--   KEYS[7] fence      STRING counter, INCR on every acquire, never below now (ms)
--   KEYS[8] epoch      STRING random marker written by the first register: a
--                            pool whose marker is gone has lost its data
--   KEYS[9] instances  HASH  executor instance ID -> url, so that one executor
--                            is never registered under two URLs
--
-- Time is Redis's own (TIME), never the caller's clock. Nothing read from a
-- key is trusted before it is checked: records are decoded with pcall, and
-- an index (holders, instances) is believed only when the record it points
-- to agrees.

local K_EXECUTORS = KEYS[1]
local K_AVAILABLE = KEYS[2]
local K_LEASES = KEYS[3]
local K_DEADLINES = KEYS[4]
local K_HOLDERS = KEYS[5]
local K_DRAINING = KEYS[6]
local K_FENCE = KEYS[7]
local K_EPOCH = KEYS[8]
local K_INSTANCES = KEYS[9]

-- Refuse to touch a pool whose keys hold data of another kind, before any
-- write: Redis does not roll a script back, so a WRONGTYPE half way through
-- would leave the pool half changed. One O(1) TYPE call per key.
local KEY_TYPES = { 'hash', 'zset', 'hash', 'zset', 'hash', 'set', 'string', 'string', 'hash' }
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

-- decode returns the table a JSON record holds, or nil when raw is missing
-- or not a JSON object: a corrupt record must never stop a script half way.
local function decode(raw)
  if not raw then
    return nil
  end
  local ok, v = pcall(cjson.decode, raw)
  if ok and type(v) == 'table' then
    return v
  end
  return nil
end

-- lease_of returns url's lease record, or nil when it has none or it is
-- unreadable.
local function lease_of(url)
  return decode(redis.call('HGET', K_LEASES, url))
end

-- end_lease drops the lease of url and returns the executor to the pool, or
-- removes it when it was deregistered while leased. It returns 1 when the
-- executor was removed, 0 when it became available (or is not registered).
local function end_lease(url, now)
  local lease = lease_of(url)
  redis.call('HDEL', K_LEASES, url)
  redis.call('ZREM', K_DEADLINES, url)
  if lease and type(lease.eval_id) == 'string' and redis.call('HGET', K_HOLDERS, lease.eval_id) == url then
    redis.call('HDEL', K_HOLDERS, lease.eval_id)
  end
  if redis.call('SREM', K_DRAINING, url) == 1 then
    local record = decode(redis.call('HGET', K_EXECUTORS, url))
    if record and record.instance_id and redis.call('HGET', K_INSTANCES, record.instance_id) == url then
      redis.call('HDEL', K_INSTANCES, record.instance_id)
    end
    redis.call('HDEL', K_EXECUTORS, url)
    return 1
  end
  if redis.call('HEXISTS', K_EXECUTORS, url) == 1 then
    redis.call('ZADD', K_AVAILABLE, now, url)
  end
  return 0
end

-- reclaim_expired ends at most limit leases whose deadline passed more than
-- grace ms ago, the oldest first, so that one call never walks the whole
-- pool. The grace covers the one-way delay to the executor and the drift of
-- clocks: a lease-aware executor has stopped the old holder's eval by then.
local function reclaim_expired(now, limit, grace)
  local expired = redis.call('ZRANGE', K_DEADLINES, '-inf', now - grace, 'BYSCORE', 'LIMIT', 0, limit)
  for _, url in ipairs(expired) do
    end_lease(url, now)
  end
  return #expired
end
