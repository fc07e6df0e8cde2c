-- release.lua: give a leased executor back; idempotent and owner-checked.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- ARGV[2] token of the lease being released
-- Returns: {outcome, now_ms, last_available_ms, holder_eval_id, removed}
--   outcome 'released'        the token held the lease: it ended, the executor
--                             is available again (or removed, if draining)
--           'already_in_pool' the executor is available: a double release
--           'stale_lease'     another lease holds it: a double release; nothing
--                             changes, the holder keeps its executor
--           'not_leased'      unknown, removed, or neither leased nor available
--   last_available_ms  when the executor last became available (its previous
--                      release, reclaim or registration), -1 if unknown
--   holder_eval_id     the eval holding the lease for 'stale_lease', else ''
--   removed            1 when a draining executor left the pool

--
-- The executor's record counts its releases, double releases and (among
-- those) stale ones, for the dashboard: no key of its own, so an executor
-- costs nothing more.

local url, token = ARGV[1], ARGV[2]

local function count(field)
  local record = decode(redis.call('HGET', K_EXECUTORS, url))
  if record then
    record[field] = (record[field] or 0) + 1
    redis.call('HSET', K_EXECUTORS, url, cjson.encode(record))
  end
end

local now = now_ms()
local lease = lease_of(url)
-- The leases were read just now and the epoch is never written here.
local bad = foreign({ 1, 2, 4, 5, 6, 7, 9, 10, 11 })
if bad then
  return redis.error_reply(bad)
end
if lease then
  if lease.token == token then
    count('releases')
    local removed = end_lease(url, now, lease)
    return { 'released', now, tonumber(lease.available_since) or -1, '', removed }
  end
  count('double_releases')
  count('stale_releases')
  return { 'stale_lease', now, tonumber(lease.available_since) or -1, tostring(lease.eval_id), 0 }
end
local since = redis.call('ZSCORE', K_AVAILABLE, url)
if since then
  count('double_releases')
  return { 'already_in_pool', now, tonumber(since), '', 0 }
end
return { 'not_leased', now, -1, '', 0 }
