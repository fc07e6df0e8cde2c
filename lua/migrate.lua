#!lua
-- migrate.lua: bring, in place, a pool written by an older release to this
-- layout, leases in flight included. Two older layouts differ from this one
-- in their indexes alone (records, leases, holders, deadlines, draining and
-- fence are alike):
--   - 89b3e49 and older wrote no epoch marker and no label set index;
--   - the releases after kept an available index and a count per subset of
--     each executor's labels (available:<subset>, labelsets), where this
--     one keeps them per label set (labelled:<set>, labelled).
-- The indexes are rebuilt from the records; a pool whose marker alone was
-- evicted gets a new one. Nothing is handed out or taken back.
--
-- KEYS: see lib.lua.
-- ARGV[1] a fresh random epoch marker, for a pool that has none
-- Returns: {outcome, executors}: 'migrated' (indexes rebuilt, the marker
-- written if missing), 'current' (nothing changed), 'empty' (no executor:
-- never created, or its data was lost, and nothing to migrate). O(pool
-- size), once.

local old_sets = PREFIX .. 'labelsets'
local unmarked = redis.call('EXISTS', K_EPOCH) == 0
if not unmarked and redis.call('EXISTS', old_sets) == 0 then
  return { 'current', redis.call('HLEN', K_EXECUTORS) }
end
local urls = redis.call('HKEYS', K_EXECUTORS)
if #urls == 0 then
  if not unmarked then
    redis.call('DEL', old_sets)
  end
  return { unmarked and 'empty' or 'current', 0 }
end
if unmarked then
  redis.call('SET', K_EPOCH, ARGV[1])
end
local records = {}
redis.call('DEL', old_sets, K_LABELLED)
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
  count_sets(records[i], 1)
  local since = redis.call('ZSCORE', K_AVAILABLE, url)
  if since then
    make_available(url, records[i], since)
  end
end
return { 'migrated', #urls }
