#!lua
-- acquire.lua: lease an executor to an eval.
--
-- KEYS: see lib.lua.
-- ARGV[1] eval_id
-- ARGV[2] token: a fresh random token for the new lease
-- ARGV[3] ttl in ms
-- ARGV[4] how many expired leases to reclaim, at most, when none is free
-- ARGV[5] wake list (evalpool:{pool}:wake:<worker>) to join the wait list
--         with when no executor is free, or '' not to wait
-- ARGV[6] how long the wait list entry lives, in ms, unless renewed by the
--         eval's next acquire
-- ARGV[7] the label set the executor must have ('' for any executor)
-- Returns: nil when no executor is free and the eval does not wait;
--   {'waiting', position (0 first)} when it joined (or stays in) the wait
--   list: the next executor freed for it is leased under ARGV[2] and pushed
--   to the wake list; else
--   {url, token, fence, deadline_ms, acquired_at_ms, available_since_ms, reentered}
-- Fails with EVALPOOL_NO_POOL when none is free and the pool's epoch marker
-- is missing: the pool was never created, or its data was lost (FLUSHALL,
-- eviction); with
-- EVALPOOL_UNSERVABLE when no registered executor has the label set; with
-- EVALPOOL_CANCELLED when the eval was cancelled.
--
-- The executor is the one idle longest among those with the label set: the
-- head of that set's available index. An eval whose last attempt found its
-- executor unavailable (avoid) gets the next one instead when there is one.
--
-- Acquire is re-entrant per eval: an eval that still holds its executor (its
-- lease not yet reclaimed, the executor not draining) gets it back under the
-- new token and a higher fence, so that the older attempt can neither renew
-- nor release it and the executor refuses it. The holders index is believed
-- only when the lease it points to is this eval's.

local eval_id, token, ttl, set = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[7] or ''
if redis.call('ZSCORE', K_CANCELLED, eval_id) then
  return redis.error_reply('EVALPOOL_CANCELLED eval ' .. eval_id .. ' was cancelled')
end
local function no_pool()
  return redis.call('EXISTS', K_EPOCH) == 0
end
local NO_POOL = 'EVALPOOL_NO_POOL the pool has no epoch marker: never created, or its data was lost'
-- The label sets whose executors can serve the eval; nil: any executor.
local sets
if set ~= '' then
  sets = serving(set)
  if #sets == 0 then
    if no_pool() then
      return redis.error_reply(NO_POOL)
    elseif redis.call('EXISTS', PREFIX .. 'labelsets') == 1 then
      return redis.error_reply('EVALPOOL_MIGRATE the pool\'s label indexes are an older release\'s')
    end
    return redis.error_reply('EVALPOOL_UNSERVABLE no registered executor has the labels ' .. set)
  end
end
local now_micro = now_us()
local now = math.floor(now_micro / 1000)

local held = redis.call('HGET', K_HOLDERS, eval_id)
local avoid = redis.call('HGET', K_AVOID, eval_id)
local stale = false
if held then
  local lease, record = lease_of(held)
  if lease and lease.eval_id == eval_id then
    local draining = record.draining ~= nil
    local deadline = tonumber(redis.call('ZSCORE', K_DEADLINES, held))
    if deadline and deadline <= now - setting('grace_ms') then
      -- Expired past the grace: reclaimed, as any acquire with nothing
      -- free would; the eval takes an executor like a newcomer.
      end_lease(held, now, 'reclaimed', lease, record)
    elseif not draining and not redis.call('ZSCORE', K_QUARANTINE, held) then
      -- Its own executor, live or expired within the grace: nobody else can
      -- hold it, and the higher fence makes the executor drop the older
      -- attempt, whose cleanup, when it comes, is the expected duplicate
      -- it is.
      return grant(held, record, eval_id, token, ttl, now, tonumber(lease.available_since) or now, 1)
    else
      -- Draining or quarantined: never handed out again, not even to its
      -- holder. Ending the lease removes the executor (or leaves it out of
      -- service), so the older attempt loses it too.
      end_lease(held, now, draining and 'drained' or 'quarantined', lease, record)
    end
  else
    -- A stale entry: the lease it points to is gone or another eval's. It
    -- is dropped with the script's other writes (a grant overwrites it).
    stale = true
  end
end

-- Take the executor idle longest: the head of the available index, or the
-- oldest head among the indexes of the label sets that serve the eval. The
-- indexes hold exactly the free executors, each script keeping them so
-- (docs/reliability.md, "Threat model"); the head's record, read for the
-- grant, confirms it. Expired leases are reclaimed only when nothing is
-- free: a reclaimed executor would be the last in line anyway, and the
-- reaper returns it meanwhile.
local function head(key, best)
  local heads = redis.call('ZRANGE', key, 0, avoid and 1 or 0, 'WITHSCORES')
  if #heads == 0 then
    return best
  end
  local c = { url = heads[1], since = tonumber(heads[2]), key = key }
  if c.url == avoid and #heads == 4 then
    c.url, c.since = heads[3], tonumber(heads[4])
  end
  -- The executor to avoid is taken only when no index has another.
  c.rank = c.url == avoid and math.huge or c.since
  if not best or c.rank < best.rank then
    return c
  end
  return best
end
-- With no label set and no executor to avoid, the head is popped in one
-- command on Redis >= 7, which refuses this call at maxmemory before it
-- runs (its flags); 6.2 must write nothing before the grant.
local pop = not sets and not avoid and redis.REDIS_VERSION_NUM ~= nil
local wake = ARGV[5]
local reclaimed = false
for _ = 1, 16 do
  local best
  if pop then
    local one = redis.call('ZPOPMIN', K_AVAILABLE)
    if #one > 0 then
      best = { url = one[1], since = tonumber(one[2]), key = K_AVAILABLE, popped = true }
    end
  elseif sets then
    for _, s in ipairs(sets) do
      best = head(labelled_key(s), best)
    end
  else
    best = head(K_AVAILABLE)
  end
  if not best then
    if reclaimed or reclaim_expired(now, tonumber(ARGV[4])) == 0 then
      break
    end
    reclaimed = true
  else
    local url = best.url
    local raw = redis.call('HGET', K_EXECUTORS, url)
    -- An unreadable record (foreign data) is written anew by the grant. One
    -- that is leased, draining, out of service or of other labels was left
    -- in this index by a lost key or an older release's write: the entry
    -- is dropped, never granted.
    local record = decode(raw) or {}
    local grantable = raw and type(record.lease) ~= 'table' and not record.draining
        and not tonumber(record.quarantined_at)
        and (best.key == K_AVAILABLE or best.key == labelled_key(table.concat(label_list(record), ',')))
    if grantable then
      -- An eval that waited before leaves the line; the two keys hold an
      -- entry together or not at all, so most acquires stop at the ZSCORE.
      local line = waiters_key(set)
      local waited = redis.call('ZSCORE', line, eval_id)
      local granted = grant(url, record, eval_id, token, ttl, now, best.since, 0)
      take_out(url, record, best.popped)
      if avoid then
        redis.call('HDEL', K_AVOID, eval_id)
      end
      if waited then
        redis.call('ZREM', line, eval_id)
        redis.call('HDEL', K_WAITING, eval_id)
      end
      return granted
    end
    if not best.popped then
      redis.call('ZREM', best.key, url)
    end
  end
end
if no_pool() then
  return redis.error_reply(NO_POOL)
end
local joins = wake ~= '' and is_wake_key(wake)
if stale then
  redis.call('HDEL', K_HOLDERS, eval_id)
end
if not joins then
  return nil
end
-- Join the wait list, keeping the place of an eval that waited before (an
-- attempt handed back to the queue comes again with its first place). The
-- place is the time in microseconds: evals that join within one millisecond
-- still keep their order.
local line = waiters_key(set)
redis.call('ZADD', line, 'NX', now_micro, eval_id)
redis.call('HSET', K_WAITING, eval_id, cjson.encode({
  token = token, ttl = ttl, wake = wake, expires = now + tonumber(ARGV[6]), set = set,
}))
return { 'waiting', redis.call('ZRANK', line, eval_id) }
