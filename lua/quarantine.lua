#!lua
-- quarantine.lua: take an executor out of service, or return it.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- ARGV[2] 'on' to quarantine, 'off' to return it to service
-- ARGV[3] for 'on', the reason ('operator', ...); for 'off', the
--         quarantined_at (ms) the caller saw when it claimed the probe, or
--         '' to return it whatever happened since (an operator)
-- Returns: {outcome, reason}:
--   'quarantined'      out of service now (at its release, if leased)
--   'already'          it was quarantined already (reason: why)
--   'returned'         back in service: to the oldest waiter it can serve
--                      first (at its release, if leased)
--   'not_quarantined'  it was not quarantined, or was quarantined again
--                      since the probe that answers now was claimed
--   'unknown'          not registered
-- A draining executor is quarantined too: it leaves at its release anyway.

local url, action = ARGV[1], ARGV[2]
local raw = redis.call('HGET', K_EXECUTORS, url)
if not raw then
  return { 'unknown', '' }
end
local record = decode(raw) or { added_at = 0 }
local now = now_ms()
local quarantined = redis.call('ZSCORE', K_QUARANTINE, url)
if action == 'on' then
  if quarantined then
    return { 'already', tostring(record.quarantine_reason or '') }
  end
  quarantine(url, record, now, ARGV[3])
  put(url, record)
  return { 'quarantined', ARGV[3] }
end
if not quarantined or (ARGV[3] ~= '' and tostring(record.quarantined_at) ~= ARGV[3]) then
  return { 'not_quarantined', '' }
end
local reason = tostring(record.quarantine_reason or '')
redis.call('ZREM', K_QUARANTINE, url)
record.fails, record.probes, record.quarantined_at, record.quarantine_reason = 0, nil, nil, nil
record.window_n, record.window_failed = 0, 0
put(url, record)
if type(record.lease) ~= 'table' then
  return_to_pool(url, now, record)
end
return { 'returned', reason }
