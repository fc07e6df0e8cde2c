#!lua
-- probe.lua: claim the quarantined executors whose health probe is due, so
-- that of all the workers running maintenance exactly one probes each, at
-- most once per backoff interval.
--
-- KEYS: see lib.lua.
-- ARGV[1] how many to claim at most
-- The first probe is due probe_ms (a setting) after the quarantine; after
-- the nth probe the next is due in probe_ms * 2^n, up to probe_max_ms, so
-- that a dead executor costs less and less.
-- Returns: {url, quarantined_at, ...}: pass quarantined_at to quarantine.lua
-- 'off' when the probe answers, so that a probe claimed before the executor
-- was quarantined again cannot return it. A leased executor (quarantined
-- while it served, going out of service at its release) is not probed; its
-- probe is put off by one interval. Only an executor quarantined for being
-- unavailable is probed: a healthy /healthz says nothing of a sandbox that
-- fails its evals (fail_rate), and an operator's quarantine holds until the
-- operator returns it; theirs are put off by the longest backoff.

local now = now_ms()
local interval = setting('probe_ms')
local longest = math.max(setting('probe_max_ms'), interval)
local out = {}
for _, url in ipairs(redis.call('ZRANGE', K_QUARANTINE, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))) do
  local raw = redis.call('HGET', K_EXECUTORS, url)
  local record = decode(raw)
  if not raw then
    redis.call('ZREM', K_QUARANTINE, url) -- not registered: nothing to probe
  elseif record and record.quarantine_reason ~= 'unavailable' then
    redis.call('ZADD', K_QUARANTINE, now + longest, url)
  elseif not record or type(record.lease) == 'table' then
    redis.call('ZADD', K_QUARANTINE, now + interval, url)
  else
    record.probes = (tonumber(record.probes) or 0) + 1
    redis.call('ZADD', K_QUARANTINE, now + math.min(interval * 2 ^ record.probes, longest), url)
    put(url, record)
    out[#out + 1] = url
    out[#out + 1] = tostring(record.quarantined_at)
  end
end
return out
