-- lib.lua: shared prelude, prepended to every evalpool script.
--
-- Every script receives the same KEYS, all under one hash tag
-- (evalpool:{<pool>}:...) so that a script touches a single cluster slot:
--   KEYS[1] executors  HASH  url -> executor record JSON {added_at, labels?,
--                            instance_id?, lease?, draining?, releases?,
--                            double_releases?, stale_releases?, duplicates?,
--                            fails?, passed?, failed?, window_n?,
--                            window_failed?, quarantined_at?,
--                            quarantine_reason?, probes?}: the one record of
--                            an executor, its lease {token, eval_id, fence,
--                            acquired_at, available_since} among it
--   KEYS[2] available  ZSET  url -> ms when it last became available; an
--                            executor with labels is also in the available
--                            index of its label set (labelled:<set>, same
--                            score), so that an eval requiring labels looks
--                            at the head of each set that has them
--   KEYS[3] leases     STRING LEASES_MOVED: where releases up to 1932b7a kept
--                            the leases (a HASH), a string, so that their
--                            scripts fail on it (WRONGTYPE, or their type
--                            check) before they write, never taking a leased
--                            executor for a free one
--   KEYS[4] deadlines  ZSET  url -> lease deadline (ms)
--   KEYS[5] holders    HASH  eval_id -> url (one lease per eval, O(1) re-entry)
--   KEYS[6] draining   SET   urls deregistered while leased, whose records
--                            say draining: the count of them
--   KEYS[7] fence      STRING a pool-wide fence counter, left by releases
--                            that kept one: read only for a record that
--                            keeps no fence of its own, never written
--   KEYS[8] epoch      STRING random marker written by the first register: a
--                            pool whose marker is gone has lost its data
--   KEYS[9] instances  HASH  executor instance ID -> url, so that one executor
--                            is never registered under two URLs
--   KEYS[10] waiters   ZSET  eval_id -> µs when it first began to wait: the
--                            FIFO wait list for a free executor; evals that
--                            require labels wait in waiters:<set>
--   KEYS[11] waiting   HASH  eval_id -> waiter JSON {token, ttl, wake, expires,
--                            set?}: the lease to grant it, the list (in this
--                            hash slot) to push the grant to, and the label
--                            set it requires
--   KEYS[12] quarantine ZSET url -> ms of its next health probe: executors
--                            taken out of service (never handed out); a
--                            leased one goes out of service at its release
--   KEYS[13] avoid     HASH  eval_id -> url its last attempt found unavailable:
--                            its next acquire prefers another executor
--   KEYS[14] labelled  HASH  label set -> how many registered executors have
--                            exactly those labels: the sets an eval's
--                            requirement is matched against, so that an eval
--                            no executor could serve is refused, not parked
--                            for ever
--   KEYS[15] cancelled ZSET  eval_id -> ms it was cancelled: acquire refuses
--                            it, so a cancelled eval never reaches an
--                            executor, whatever Asynq still delivers
--   KEYS[16] history   STREAM one entry per lease that ended, its ID the end
--                            (ms): {url, eval, from (ms), how: released |
--                            reclaimed | left | drained | quarantined}; the last
--                            HISTORY_LEN, for the leases' timeline
--   KEYS[17] outlived  ZSET  lease token -> ms its lease ended otherwise
--                            than by its release (reclaimed, drained or taken
--                            out of service at a re-entry), the last
--                            OUTLIVED_LEN (reap trims it): a release by one of
--                            these tokens is its holder's, come too late
--   KEYS[18] clock     HASH  {skew, last, promised, gen, steps?, step_ms?,
--                            step_at?, rewinds?, rewound_at?}:
--                            the pool's time (see pool_now_us) and a
--                            generation that only grows (clock.lua)
--   KEYS[19] settings  HASH  {grace_ms?, quarantine_after?, fail_rate?,
--                            probe_ms?, probe_max_ms?}: the settings every
--                            process using the pool shares (pool config);
--                            one missing is its default (setting)
--
-- A label set is its labels as sorted "key=value" strings joined by ",".
-- An executor has at most MAX_LABELS labels, and is in one label set's
-- index whatever their number: a ZADD more on release, a ZREM on acquire.
--
-- Time is the pool's (pool_now_us): Redis's own clock less the steps it
-- took, never the caller's clock. Nothing read from a
-- key is trusted before it is checked: records are decoded with pcall, and
-- an index (holders, instances) is believed only when the record it points
-- to agrees. A missing key is a fault every script survives. A key of
-- another type is an operator's error (docs/reliability.md, "Threat
-- model"), not checked here: the typed command that meets it fails the
-- script with WRONGTYPE (never reads as empty, so never as free), and
-- pool check names the key.

local LEASES_MOVED = 'the leases are in the executor records: evalpool after 1932b7a'
local HISTORY_LEN = 100000
local OUTLIVED_LEN = 100000
local K_EXECUTORS, K_AVAILABLE, K_LEASES, K_DEADLINES, K_HOLDERS, K_DRAINING
local K_FENCE, K_EPOCH, K_INSTANCES, K_WAITERS, K_WAITING, K_QUARANTINE
local K_AVOID, K_LABELLED, K_CANCELLED, K_HISTORY, K_OUTLIVED, K_CLOCK, K_SETTINGS
local PREFIX, WAKE_PREFIX
-- The call's time, read once by now_us (below), and the pool's settings,
-- read once by setting.
local redis_now, pool_now, settings

-- bind starts a call: it names the call's keys and forgets the last call's
-- time. Every script's body runs it first, so that the prelude can be
-- loaded once, as a function library, and serve every call.
local function bind(keys)
  K_EXECUTORS = keys[1]
  K_AVAILABLE = keys[2]
  K_LEASES = keys[3]
  K_DEADLINES = keys[4]
  K_HOLDERS = keys[5]
  K_DRAINING = keys[6]
  K_FENCE = keys[7]
  K_EPOCH = keys[8]
  K_INSTANCES = keys[9]
  K_WAITERS = keys[10]
  K_WAITING = keys[11]
  K_QUARANTINE = keys[12]
  K_AVOID = keys[13]
  K_LABELLED = keys[14]
  K_CANCELLED = keys[15]
  K_HISTORY = keys[16]
  K_OUTLIVED = keys[17]
  K_CLOCK = keys[18]
  K_SETTINGS = keys[19]
  PREFIX = string.sub(K_AVAILABLE, 1, #K_AVAILABLE - #'available')
  WAKE_PREFIX = PREFIX .. 'wake:'
  redis_now, pool_now, settings = nil, nil, nil
end

-- The defaults of the settings, and their bounds (pool.Settings says what
-- each is for; pool/settings.go holds the same).
local DEFAULTS = {
  grace_ms = 2000, quarantine_after = 3, fail_rate = 0, probe_ms = 10000, probe_max_ms = 60000,
}
local BOUNDS = {
  grace_ms = 600000, quarantine_after = 1000000, fail_rate = 1, probe_ms = 86400000, probe_max_ms = 86400000,
}

-- setting returns the pool's setting name: the settings hash's, else its
-- default. Only the paths that use one read them (a reclaim, a failure, a
-- probe), so that a lease that passes costs no read. A value pool config
-- would not write is the default: a share is decimal digits (with a point)
-- up to 1, any other setting whole decimal digits up to its bound, so that
-- neither a negative grace (live leases reclaimed) nor a huge one (dead
-- holders' leases kept) applies, nor what Lua alone would read (0x10).
local function setting(name)
  if not settings then
    settings = {}
    local kv = redis.call('HGETALL', K_SETTINGS)
    for i = 1, #kv, 2 do
      settings[kv[i]] = kv[i + 1]
    end
  end
  local raw = settings[name]
  local pattern = name == 'fail_rate' and '^%d*%.?%d+$' or '^%d+$'
  local v = raw and #raw <= 20 and string.match(raw, pattern) and tonumber(raw)
  if not v or v > BOUNDS[name] then
    return DEFAULTS[name]
  end
  return v
end
local MAX_LABELS = 4

-- The pool's time is Redis's clock less the steps it took, so that a step
-- of the Redis host's clock never makes a live lease look expired. Redis
-- alone cannot tell a step from a quiet spell, so the workers tell it: each
-- one ticks (clock.lua) every second and promises the next tick by
-- `promised`. Past a promise broken (by more than STEP_MIN, which the grace
-- covers), the pool's time stands still at the promise until a tick takes
-- the step out into `skew`: a step never shows by more than the promise,
-- less than a lease's time left when its holder renews it (two thirds of
-- the TTL, plus the grace). Were the workers really all gone, their leases
-- are reclaimed that much later. A worker that stops withdraws its promise;
-- without one the pool's time is Redis's, less the skew. It never goes
-- back: behind the last tick (`last`) it stands still, and the tick takes
-- the step back out too. Only ticks write the clock, so that every other
-- script's time is a read, and a failed script changes nothing.
local CLOCK_PROMISE = 2000000
local STEP_MIN = 250000

-- clock_read returns the pool's time in µs, and the step of Redis's clock
-- since the last tick (µs, negative when back), or nil.
local function clock_read()
  local t = redis.call('TIME')
  redis_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local c = redis.call('HMGET', K_CLOCK, 'skew', 'last', 'promised')
  local skew, last, promised = tonumber(c[1]) or 0, tonumber(c[2]), tonumber(c[3])
  local now = redis_now - skew
  if last and now < last then
    return last, now - last
  elseif promised and now > promised + STEP_MIN then
    return promised, now - promised
  end
  return now, nil
end

-- now_us is the pool's time in µs, the same for the whole call.
local function now_us()
  if not pool_now then
    pool_now = clock_read()
  end
  return pool_now
end

-- redis_ms is Redis's own clock in ms, as the call's now_us read it.
local function redis_ms()
  now_us()
  return math.floor(redis_now / 1000)
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

-- put writes url's record. One JSON cannot say again (a NaN or an infinity
-- another program wrote) is written anew, its fence, lease and labels kept
-- where they can be, so that foreign data never stops a script half way.
local function put(url, record)
  local ok, raw = pcall(cjson.encode, record)
  if not ok then
    local labels = {}
    for k, v in pairs(type(record.labels) == 'table' and record.labels or {}) do
      if type(k) == 'string' and type(v) == 'string' then
        labels[k] = v
      end
    end
    local fence = tonumber(record.fence)
    local fresh = {
      labels = next(labels) and labels or nil, lease = record.lease,
      fence = fence and math.abs(fence) < math.huge and fence or nil,
    }
    ok, raw = pcall(cjson.encode, fresh)
    if not ok then
      fresh.lease = nil
      raw = cjson.encode(fresh)
    end
  end
  redis.call('HSET', K_EXECUTORS, url, raw)
end

-- lease_of returns url's lease and its executor record: nil for a record
-- that is missing or unreadable, and for the lease of an executor not
-- leased.
local function lease_of(url)
  local record = decode(redis.call('HGET', K_EXECUTORS, url))
  return record and type(record.lease) == 'table' and record.lease or nil, record
end

-- label_list is a record's labels as sorted "key=value" strings.
local function label_list(record)
  local out = {}
  if record and type(record.labels) == 'table' then
    for k, v in pairs(record.labels) do
      if type(k) == 'string' and type(v) == 'string' then
        out[#out + 1] = k .. '=' .. v
      end
    end
  end
  table.sort(out)
  return out
end

-- label_sets is every non-empty subset of a sorted label list, by name: the
-- label sets an eval may require that this executor can serve, whose wait
-- lists a handoff looks at.
local function label_sets(list)
  local sets = {}
  local n = math.min(#list, MAX_LABELS)
  for mask = 1, 2 ^ n - 1 do
    local parts = {}
    for i = 1, n do
      if math.floor(mask / 2 ^ (i - 1)) % 2 == 1 then
        parts[#parts + 1] = list[i]
      end
    end
    sets[#sets + 1] = table.concat(parts, ',')
  end
  return sets
end

-- labelled_key names the available index of the executors whose labels are
-- exactly set; waiters_key the wait list of the evals that require set. The
-- empty set's are the pool's own keys: every executor is in available.
local function labelled_key(set)
  return PREFIX .. 'labelled:' .. set
end

local function waiters_key(set)
  if set == nil or set == '' then
    return K_WAITERS
  end
  return PREFIX .. 'waiters:' .. set
end

-- make_available puts url in the pool's available index and, when it has
-- labels, in its label set's.
local function make_available(url, record, since)
  redis.call('ZADD', K_AVAILABLE, since, url)
  local set = table.concat(label_list(record), ',')
  if set ~= '' then
    redis.call('ZADD', labelled_key(set), since, url)
  end
end

-- take_out removes url from the available indexes make_available put it in
-- (but the pool's own when popped has taken it out already).
local function take_out(url, record, popped)
  if not popped then
    redis.call('ZREM', K_AVAILABLE, url)
  end
  local set = table.concat(label_list(record), ',')
  if set ~= '' then
    redis.call('ZREM', labelled_key(set), url)
  end
end

-- count_sets adds delta to the count of registered executors with exactly
-- a record's labels, so that labelled names every label set in the pool.
local function count_sets(record, delta)
  local set = table.concat(label_list(record), ',')
  if set ~= '' and redis.call('HINCRBY', K_LABELLED, set, delta) <= 0 then
    redis.call('HDEL', K_LABELLED, set)
  end
end

-- serving lists the label sets in the pool that hold every label of
-- required (a label set's name): the indexes an eval that requires it may
-- take an executor from.
local function serving(required)
  local want = {}
  for label in string.gmatch(required, '[^,]+') do
    want[#want + 1] = ',' .. label .. ','
  end
  local out = {}
  for _, set in ipairs(redis.call('HKEYS', K_LABELLED)) do
    local has, padded = true, ',' .. set .. ','
    for _, label in ipairs(want) do
      if not string.find(padded, label, 1, true) then
        has = false
        break
      end
    end
    if has then
      out[#out + 1] = set
    end
  end
  return out
end

-- next_fence is the fence of url's next grant: above the last one its
-- record keeps (fence), and never below Redis's own clock in ms (not the
-- pool's, which a rewind or a step may have held back), so that a Redis that
-- lost the record, or went back to a snapshot, still grants fences above
-- those the executor has seen: one executor is granted far fewer than 1,000
-- leases a second. A record without a fence of its own, written by a
-- release that kept one counter for the pool, starts from that counter.
local function next_fence(record)
  local floor = redis_ms()
  local last = tonumber(record.fence)
  if not last then
    last = tonumber(redis.call('GET', K_FENCE))
  end
  if last and last >= floor and last < 1e15 then
    return last + 1
  end
  return floor
end

-- grant writes the lease into url's record (a table): its first write, so
-- that at maxmemory a Redis that does not read the flags (6.2) refuses it
-- before anything changed.
local function grant(url, record, eval_id, token, ttl, now, available_since, reentered)
  local fence = next_fence(record)
  local deadline = now + ttl
  record.fence = fence
  record.lease = {
    token = token, eval_id = eval_id, fence = fence, ttl = ttl,
    acquired_at = now, available_since = available_since,
  }
  put(url, record)
  redis.call('ZADD', K_DEADLINES, deadline, url)
  redis.call('HSET', K_HOLDERS, eval_id, url)
  return { url, token, fence, deadline, now, available_since, reentered }
end

-- is_wake_key reports whether key is a wake list of this pool: in its hash
-- slot, so that a handoff never writes outside the pool.
local function is_wake_key(key)
  return string.sub(key, 1, #WAKE_PREFIX) == WAKE_PREFIX
end

-- waiter_lists names the wait lists an executor can serve, its record's
-- label sets' after the pool's own, in the order return_to_pool looks at them.
local function waiter_lists(record)
  local lists = { K_WAITERS }
  for _, set in ipairs(label_sets(label_list(record))) do
    lists[#lists + 1] = waiters_key(set)
  end
  return lists
end

-- How many entries one handoff may look at: dead ones are dropped as it
-- goes, and any left for the next handoff, so that no call walks the list.
local HANDOFF_LOOK = 16

-- return_to_pool makes url available, or hands it straight to the oldest
-- live waiter it can serve: the lease is granted inside this script, so no
-- newcomer can take the executor first, and the grant is pushed to the
-- waiter's wake list, where its worker's one blocking connection picks it
-- up. The oldest
-- is the first in line among the wait lists of the label sets the executor
-- has (the empty set's first), so that a waiter for labels it lacks never
-- holds up one it can serve. A waiter whose entry outlived its expiry, or
-- that already holds a lease, is dropped. A quarantined executor stays out
-- of service. record is url's executor record when the caller has read it;
-- out_of_service, whether it is quarantined, when the caller knows (nil:
-- read).
local function return_to_pool(url, now, record, out_of_service)
  if out_of_service == nil then
    out_of_service = redis.call('ZSCORE', K_QUARANTINE, url) ~= false
  end
  if out_of_service then
    return nil
  end
  record = record or decode(redis.call('HGET', K_EXECUTORS, url)) or {}
  -- Every waiter has its entry in waiting: with none, no list is looked at.
  local lists = redis.call('HLEN', K_WAITING) > 0 and waiter_lists(record) or {}
  for _ = 1, HANDOFF_LOOK do
    local list, eval_id, first
    for _, key in ipairs(lists) do
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #head > 0 and (not first or tonumber(head[2]) < first) then
        list, eval_id, first = key, head[1], tonumber(head[2])
      end
    end
    if not eval_id then
      break
    end
    local w = decode(redis.call('HGET', K_WAITING, eval_id))
    redis.call('ZREM', list, eval_id)
    redis.call('HDEL', K_WAITING, eval_id)
    if w and tonumber(w.expires) and tonumber(w.expires) > now and type(w.token) == 'string'
        and tonumber(w.ttl) and type(w.wake) == 'string' and is_wake_key(w.wake)
        and redis.call('HEXISTS', K_HOLDERS, eval_id) == 0 then
      local g = grant(url, record, eval_id, w.token, tonumber(w.ttl), now, now, 0)
      redis.call('LPUSH', w.wake, table.concat({ eval_id, g[2], g[1], g[3], g[4], g[5] }, '\t'))
      redis.call('PEXPIRE', w.wake, 600000)
      return eval_id
    end
  end
  make_available(url, record, now)
  return nil
end

-- valid_labels reports whether raw is a JSON object of at most MAX_LABELS
-- string values, none holding the ',' or '=' that label set names use.
local function valid_labels(raw)
  local labels = decode(raw)
  if not labels then
    return false
  end
  local n = 0
  for k, v in pairs(labels) do
    n = n + 1
    if type(k) ~= 'string' or type(v) ~= 'string' or string.find(k .. v, '[,=]') then
      return false
    end
  end
  return n <= MAX_LABELS
end

-- set_labels gives a registered executor new labels (a table) and writes
-- its record; false when they are the ones it has. An available executor
-- moves to its new sets' indexes, to the oldest waiter it can now serve
-- first.
local function set_labels(url, record, labels, now)
  if next(labels) == nil then
    labels = nil
  end
  if table.concat(label_list(record), ',') == table.concat(label_list({ labels = labels }), ',') then
    return false
  end
  local available = redis.call('ZSCORE', K_AVAILABLE, url)
  if available then
    take_out(url, record)
  end
  count_sets(record, -1)
  record.labels = labels
  count_sets(record, 1)
  put(url, record)
  if available then
    return_to_pool(url, now, record)
  end
  return true
end

-- quarantine takes url out of service until a health probe (or an operator)
-- returns it: out of every available index now, and, when it is leased, at
-- its release (return_to_pool leaves a quarantined executor alone). Its
-- first probe is due after the probe_ms setting. The caller writes record.
local function quarantine(url, record, now, reason)
  redis.call('ZADD', K_QUARANTINE, now + setting('probe_ms'), url)
  record.quarantined_at, record.quarantine_reason, record.probes = now, reason, 0
  take_out(url, record)
end

-- end_lease drops the lease of url and returns the executor to the pool
-- (to its oldest waiter first), or removes it when it was deregistered while
-- leased. It returns 1 when the executor was removed, 0 when it was freed
-- (or is not registered). how says why it ended, for the history. record is
-- url's executor record when the caller has read it (and may have changed
-- it: end_lease writes it), lease its lease; out_of_service, what
-- return_to_pool takes. A lease that ends otherwise than by its release
-- leaves its token in outlived.
local function end_lease(url, now, how, lease, record, out_of_service)
  if not record then
    lease, record = lease_of(url)
  end
  redis.call('ZREM', K_DEADLINES, url)
  redis.call('XADD', K_HISTORY, 'MAXLEN', '~', HISTORY_LEN, '*', 'url', url,
    'eval', lease and tostring(lease.eval_id) or '', 'from', lease and tostring(lease.acquired_at) or '', 'how', how)
  if how ~= 'released' and lease and type(lease.token) == 'string' then
    redis.call('ZADD', K_OUTLIVED, now, lease.token)
  end
  if lease and type(lease.eval_id) == 'string' then
    -- An eval holds one lease at most (acquire re-enters its own, a
    -- handoff skips an eval that holds one), so its entry names url.
    redis.call('HDEL', K_HOLDERS, lease.eval_id)
  end
  if record and record.draining then
    redis.call('SREM', K_DRAINING, url)
    if record.instance_id and redis.call('HGET', K_INSTANCES, record.instance_id) == url then
      redis.call('HDEL', K_INSTANCES, record.instance_id)
    end
    count_sets(record, -1)
    redis.call('ZREM', K_QUARANTINE, url)
    redis.call('HDEL', K_EXECUTORS, url)
    return 1
  end
  if record then
    record.lease = nil
    put(url, record)
    return_to_pool(url, now, record, out_of_service)
  end
  return 0
end

-- idle_quarantined counts the quarantined executors that hold no lease:
-- one leased is in the deadlines too. O(quarantine size), which is short.
local function idle_quarantined()
  local n = 0
  for _, url in ipairs(redis.call('ZRANGE', K_QUARANTINE, 0, -1)) do
    if not redis.call('ZSCORE', K_DEADLINES, url) then
      n = n + 1
    end
  end
  return n
end

-- reclaim_expired ends at most limit leases whose deadline passed more than
-- the grace (grace_ms) ago, the oldest first, so that one call never walks
-- the whole pool. The grace covers the one-way delay to the executor and
-- the drift of clocks: a lease-aware executor has stopped the old holder's
-- eval by then. It returns how many it ended.
local function reclaim_expired(now, limit)
  local expired = redis.call('ZRANGE', K_DEADLINES, '-inf', now - setting('grace_ms'), 'BYSCORE', 'LIMIT', 0, limit)
  for _, url in ipairs(expired) do
    end_lease(url, now, 'reclaimed')
  end
  return #expired
end
