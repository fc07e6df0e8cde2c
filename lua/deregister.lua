#!lua flags=allow-oom
-- deregister.lua: remove an executor; one that is leased is drained instead.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- Returns: 'removed' (it was not leased, it is gone now) | 'draining' (it is
-- leased: never handed out again, removed when its lease ends) | 'unknown'.
-- A quarantined executor leaves the quarantine with it.

local url = ARGV[1]
local lease, record = lease_of(url)
if redis.call('HEXISTS', K_EXECUTORS, url) == 0 then
  return 'unknown'
end
if lease then
  redis.call('SADD', K_DRAINING, url)
  record.draining = 1
  put(url, record)
  return 'draining'
end
if record and record.instance_id and redis.call('HGET', K_INSTANCES, record.instance_id) == url then
  redis.call('HDEL', K_INSTANCES, record.instance_id)
end
take_out(url, record)
count_sets(record, -1)
redis.call('ZREM', K_QUARANTINE, url)
redis.call('HDEL', K_EXECUTORS, url)
return 'removed'
