#!lua
-- adopt.lua: take over, in place, a pool that has executors but no epoch
-- marker: one written by a release before the marker (89b3e49 and older),
-- whose records, leases, holders, deadlines, draining set and fence are
-- this layout's already, or one whose marker alone was evicted. Only the
-- marker and the label sets (their counts and available indexes) are
-- missing; leases in flight are left as they are, so nothing is lost or
-- handed out twice.
--
-- KEYS: see lib.lua.
-- ARGV[1] a fresh random epoch marker
-- Returns: {outcome, executors}: 'adopted' (the marker written, the label
-- sets rebuilt), 'current' (the pool has its marker: nothing changed),
-- 'empty' (no executor: never created, or its data was lost, and there is
-- nothing to adopt). O(pool size), once.

if redis.call('EXISTS', K_EPOCH) == 1 then
  return { 'current', redis.call('HLEN', K_EXECUTORS) }
end
local urls = redis.call('HKEYS', K_EXECUTORS)
if #urls == 0 then
  return { 'empty', 0 }
end
redis.call('SET', K_EPOCH, ARGV[1])
redis.call('DEL', K_LABELSETS)
for _, url in ipairs(urls) do
  local record = decode(redis.call('HGET', K_EXECUTORS, url))
  count_sets(record, 1)
  local since = redis.call('ZSCORE', K_AVAILABLE, url)
  if since then
    make_available(url, record, since)
  end
end
return { 'adopted', #urls }
