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
--   KEYS[10] waiters   ZSET  eval_id -> µs when it first began to wait: the
--                            FIFO wait list for a free executor
--   KEYS[11] waiting   HASH  eval_id -> waiter JSON {token, ttl, wake, expires}:
--                            the lease to grant it and the list (in this
--                            hash slot) to push the grant to
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
local K_WAITERS = KEYS[10]
local K_WAITING = KEYS[11]

-- foreign returns an EVALPOOL_FOREIGN_DATA error for the first of the keys
-- named (indexes into KEYS) that holds data of another kind, or nil. Redis
-- does not roll a script back, so a WRONGTYPE half way through would leave
-- the pool half changed: each script calls this before its first write,
-- naming every key it may touch after that write and has not already read
-- with a typed command (a typed read fails on foreign data before anything
-- changed). One O(1) TYPE call per key named.
local KEY_TYPES = { 'hash', 'zset', 'hash', 'zset', 'hash', 'set', 'string', 'string', 'hash', 'zset', 'hash' }
local ALL_KEYS = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 }
local function foreign(indexes)
  for _, i in ipairs(indexes) do
    local got = redis.call('TYPE', KEYS[i]).ok
    if got ~= 'none' and got ~= KEY_TYPES[i] then
      return 'EVALPOOL_FOREIGN_DATA ' .. KEYS[i] .. ' holds a ' .. got .. ', not a ' .. KEY_TYPES[i]
    end
  end
  return nil
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function now_ms()
  return math.floor(now_us() / 1000)
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

-- grant leases url to eval_id under token for ttl ms, at a fence above
-- every one before. The fence never falls below the clock in ms, so that a
-- Redis that lost its data (no persistence) still hands out fences above
-- those executors have already seen, unless acquires outran 1,000 a second
-- for long.
local function grant(url, eval_id, token, ttl, now, available_since, reentered)
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

-- is_wake_key reports whether key is a wake list of this pool: in its hash
-- slot, so that a handoff never writes outside the pool.
local WAKE_PREFIX = string.sub(K_WAITERS, 1, #K_WAITERS - #'waiters') .. 'wake:'
local function is_wake_key(key)
  return string.sub(key, 1, #WAKE_PREFIX) == WAKE_PREFIX
end

-- is_list_or_none reports whether key may take an LPUSH: a grant is pushed
-- only after it is written, so a wake list holding foreign data would leave
-- a lease nobody was told of.
local function is_list_or_none(key)
  local t = redis.call('TYPE', key).ok
  return t == 'list' or t == 'none'
end

-- How many entries one handoff may look at: dead ones are dropped as it
-- goes, and any left for the next handoff, so that no call walks the list.
local HANDOFF_LOOK = 16

-- free makes url available, or hands it straight to the oldest live waiter:
-- the lease is granted inside this script, so no newcomer can take the
-- executor first, and the grant is pushed to the waiter's wake list, where
-- its worker's one blocking connection picks it up. A waiter whose entry
-- outlived its expiry, or that already holds a lease, is dropped.
local function free(url, now)
  for _ = 1, HANDOFF_LOOK do
    local head = redis.call('ZRANGE', K_WAITERS, 0, 0)
    if #head == 0 then
      break
    end
    local eval_id = head[1]
    local w = decode(redis.call('HGET', K_WAITING, eval_id))
    redis.call('ZREM', K_WAITERS, eval_id)
    redis.call('HDEL', K_WAITING, eval_id)
    if w and tonumber(w.expires) and tonumber(w.expires) > now and type(w.token) == 'string'
        and tonumber(w.ttl) and type(w.wake) == 'string' and is_wake_key(w.wake)
        and redis.call('HEXISTS', K_HOLDERS, eval_id) == 0
        and is_list_or_none(w.wake) then
      local g = grant(url, eval_id, w.token, tonumber(w.ttl), now, now, 0)
      redis.call('LPUSH', w.wake, table.concat({ eval_id, g[2], g[1], g[3], g[4], g[5] }, '\t'))
      redis.call('PEXPIRE', w.wake, 600000)
      return eval_id
    end
  end
  redis.call('ZADD', K_AVAILABLE, now, url)
  return nil
end

-- end_lease drops the lease of url and returns the executor to the pool
-- (to its oldest waiter first), or removes it when it was deregistered while
-- leased. It returns 1 when the executor was removed, 0 when it was freed
-- (or is not registered). lease is url's lease record when the caller has
-- already read it.
local function end_lease(url, now, lease)
  lease = lease or lease_of(url)
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
    free(url, now)
  end
  return 0
end

-- reclaim_expired ends at most limit leases whose deadline passed more than
-- grace ms ago, the oldest first, so that one call never walks the whole
-- pool. The grace covers the one-way delay to the executor and the drift of
-- clocks: a lease-aware executor has stopped the old holder's eval by then.
-- It returns how many it ended, and a foreign-data error (nothing ended)
-- when a key it would touch holds data of another kind.
local function reclaim_expired(now, limit, grace)
  local expired = redis.call('ZRANGE', K_DEADLINES, '-inf', now - grace, 'BYSCORE', 'LIMIT', 0, limit)
  if #expired == 0 then
    return 0, nil
  end
  local bad = foreign({ 1, 2, 3, 5, 6, 7, 9, 10, 11 })
  if bad then
    return 0, bad
  end
  for _, url in ipairs(expired) do
    end_lease(url, now)
  end
  return #expired, nil
end
