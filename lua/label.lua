#!lua
-- label.lua: give a registered executor new labels.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- ARGV[2] labels: a JSON object of at most MAX_LABELS string values ('{}'
--         for none)
-- Returns: 'relabeled' | 'unchanged' | 'unknown'. An available executor
-- moves to the indexes of its new label sets (to the oldest waiter it can
-- now serve first); a leased one is returned under them.
-- Fails with EVALPOOL_BAD_LABELS, changing nothing, when labels are not such
-- an object.

local url, labels = ARGV[1], ARGV[2]
if not valid_labels(labels) then
  return redis.error_reply('EVALPOOL_BAD_LABELS labels of ' .. url .. ': want a JSON object of at most ' .. MAX_LABELS .. ' string values')
end
local record = decode(redis.call('HGET', K_EXECUTORS, url))
if not record then
  return 'unknown'
end
if set_labels(url, record, cjson.decode(labels), now_ms()) then
  return 'relabeled'
end
return 'unchanged'
