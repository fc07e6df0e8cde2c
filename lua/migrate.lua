#!lua
-- migrate.lua: bring, in place, a pool written by an older release to this
-- layout, leases in flight included. The older layouts differ from this one
-- in where leases and label sets are kept (records, holders, deadlines,
-- draining and fence are alike):
--   - 89b3e49 and older wrote no epoch marker and no label set index;
--   - releases up to 1932b7a kept an available index and a count per subset
--     of each executor's labels (available:<subset>, labelsets), where this
--     one keeps them per label set (labelled:<set>, labelled);
--   - both kept each lease in a hash of its own (leases), where this one
--     keeps it in the executor's record, and leaves LEASES_MOVED under that
--     key, so that their scripts fail there rather than take a leased
--     executor for a free one; and the drain in the draining set alone,
--     where this one marks the record too.
-- The indexes are rebuilt from the records; a pool whose marker alone was
-- evicted gets a new one. Nothing is handed out or taken back.
--
-- KEYS: see lib.lua.
-- ARGV[1] a fresh random epoch marker, for a pool that has none
-- ARGV[2] 'rebuild' to rebuild the label sets' indexes and counts of a pool
--         of this layout too: the repair of a lost labelled key
-- Returns: {outcome, executors, epoch}: outcome 'migrated' (done),
-- 'current' (nothing changed but a LEASES_MOVED lost alone, written
-- again), 'empty' (no executor: never created, or its data was lost, and
-- nothing to migrate); epoch the pool's marker after it ('' for none), so
-- that a worker's tick reads both in one call.
-- O(pool size), once.

local old_sets = PREFIX .. 'labelsets'
local unmarked = redis.call('EXISTS', K_EPOCH) == 0
local leases_type = redis.call('TYPE', K_LEASES).ok
local old_leases = leases_type == 'hash'
if ARGV[2] ~= 'rebuild' and not unmarked and not old_leases and redis.call('EXISTS', old_sets) == 0 then
  if leases_type == 'none' then
    redis.call('SET', K_LEASES, LEASES_MOVED) -- lost alone: written again
  end
  return { 'current', redis.call('HLEN', K_EXECUTORS), redis.call('GET', K_EPOCH) }
end
local urls = redis.call('HKEYS', K_EXECUTORS)
if #urls == 0 and unmarked then
  return { 'empty', 0, '' }
end
if unmarked then
  redis.call('SET', K_EPOCH, ARGV[1])
end
local records, leases, draining = {}, {}, {}
if old_leases then
  local kv = redis.call('HGETALL', K_LEASES)
  for i = 1, #kv, 2 do
    leases[kv[i]] = decode(kv[i + 1])
  end
  for _, url in ipairs(redis.call('SMEMBERS', K_DRAINING)) do
    draining[url] = 1
  end
end
redis.call('DEL', old_sets, K_LABELLED, K_LEASES)
redis.call('SET', K_LEASES, LEASES_MOVED)
for i, url in ipairs(urls) do
  records[i] = decode(redis.call('HGET', K_EXECUTORS, url))
  local list = label_list(records[i])
  for _, subset in ipairs(label_sets(list)) do
    redis.call('DEL', PREFIX .. 'available:' .. subset)
  end
  if #list > 0 then
    redis.call('DEL', labelled_key(table.concat(list, ',')))
  end
end
for i, url in ipairs(urls) do
  local record = records[i]
  if record and (leases[url] or draining[url]) then
    record.lease, record.draining = leases[url], draining[url]
    put(url, record)
  end
  count_sets(record, 1)
  local since = redis.call('ZSCORE', K_AVAILABLE, url)
  if since then
    make_available(url, record, since)
  end
end
return { 'migrated', #urls, redis.call('GET', K_EPOCH) }
