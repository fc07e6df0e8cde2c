#!lua
-- register.lua: add executors to the pool, as many as the caller names in
-- one call; idempotent.
--
-- KEYS: see lib.lua.
-- ARGV[1] a fresh random epoch, written only if the pool has none yet
-- ARGV[2..]: url, labels (a JSON object of at most MAX_LABELS string
-- values, or '' to keep a known executor's labels and give a new one
-- none), instance_id (the executor's own ID, or '' when unknown); the three
-- repeated once per executor.
-- Returns: {epoch, status...}: the pool's epoch, then one status per
-- executor, in ARGV's order:
--   'added'              new; available now, or left with its lease when the
--                        record was lost while it was leased
--   'already_registered' known, same labels; a drain of it is cancelled
--   'relabeled'          known, with other labels: they replace the old ones
--   'repaired'           known, yet neither available, leased nor
--                        quarantined (lost): made available again
-- An executor made available goes to the oldest waiter it can serve first
-- (return_to_pool, in lib.lua).
--   'duplicate <url>'    its instance ID is registered under another URL:
--                        one executor is never in the pool twice; nothing
--                        changed
-- Fails with EVALPOOL_BAD_LABELS, changing nothing, when labels are not such
-- an object.

for i = 2, #ARGV, 3 do
  if ARGV[i + 1] ~= '' and not valid_labels(ARGV[i + 1]) then
    return redis.error_reply('EVALPOOL_BAD_LABELS labels of ' .. ARGV[i] .. ': want a JSON object of at most ' .. MAX_LABELS .. ' string values')
  end
end
-- A new pool, or one whose data was lost: the marker starts again.
redis.call('SET', K_EPOCH, ARGV[1], 'NX')
redis.call('SET', K_LEASES, LEASES_MOVED, 'NX')
local epoch = redis.call('GET', K_EPOCH)
local now = now_ms()
local out = { epoch }
for i = 2, #ARGV, 3 do
  local url, labels, instance = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local other = instance ~= '' and redis.call('HGET', K_INSTANCES, instance)
  if other and other ~= url and redis.call('HEXISTS', K_EXECUTORS, other) == 1 then
    out[#out + 1] = 'duplicate ' .. other
  else
    local record = decode(redis.call('HGET', K_EXECUTORS, url))
    -- A deadline is a lease, even one whose record was lost with the
    -- executors hash, and so is a record's lease whose deadline was lost:
    -- never freed here.
    local leased = record and type(record.lease) == 'table' or redis.call('ZSCORE', K_DEADLINES, url) ~= false
    local available = redis.call('ZSCORE', K_AVAILABLE, url)
    local quarantined = redis.call('ZSCORE', K_QUARANTINE, url)
    -- A pool add cancels a drain.
    redis.call('SREM', K_DRAINING, url)
    if record then
      if record.draining or instance ~= '' and record.instance_id ~= instance then
        record.draining = nil
        if instance ~= '' then
          record.instance_id = instance
        end
        put(url, record)
      end
      if labels ~= '' and set_labels(url, record, cjson.decode(labels), now) then
        out[#out + 1] = 'relabeled'
      elseif not leased and not available and not quarantined then
        -- Back where the record says it belongs: out of service if it is.
        if tonumber(record.quarantined_at) then
          redis.call('ZADD', K_QUARANTINE, now, url)
        else
          return_to_pool(url, now, record)
        end
        out[#out + 1] = 'repaired'
      else
        out[#out + 1] = 'already_registered'
      end
    else
      record = { added_at = now }
      if labels ~= '' and next(cjson.decode(labels)) then
        record.labels = cjson.decode(labels)
      end
      if instance ~= '' then
        record.instance_id = instance
      end
      -- A record lost with the executors hash while the executor was out
      -- of service stays out: its schedule says so, not why, so it waits
      -- for an operator.
      if quarantined then
        record.quarantined_at, record.quarantine_reason, record.probes = now, 'operator', 0
      end
      put(url, record)
      count_sets(record, 1)
      -- An executor still leased (its record was lost under a live lease)
      -- returns at its release or reclaim, never now.
      if not leased and not quarantined then
        return_to_pool(url, now, record)
      end
      out[#out + 1] = 'added'
    end
    if instance ~= '' then
      redis.call('HSET', K_INSTANCES, instance, url)
    end
  end
end
return out
