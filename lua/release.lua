#!lua flags=allow-oom
-- release.lua: give a leased executor back; idempotent and owner-checked.
-- The release that ends the lease also records what the attempt made of the
-- executor, and may take it out of service.
--
-- KEYS: see lib.lua.
-- ARGV[1] url
-- ARGV[2] token of the lease being released
-- ARGV[3] verdict: 'passed' or 'failed' (the executor answered, the eval was
--         graded), 'errored' (the executor answered that the eval has no
--         grade by its own fault: its grader crashed, ...), 'unavailable'
--         (the executor did not serve the call: refused connection,
--         timeout, 5xx, malformed answer), or '' (no verdict on the
--         executor: the attempt was cancelled, lost its lease, ...)
-- ARGV[4] '1' when the eval will be retried: after 'unavailable' or
--         'errored', its next acquire prefers another executor
-- ARGV[5] '1' when the release comes from a cleanup, a path the lease is
--         released on by design: only such a release can be an expected
--         duplicate
-- Returns: {outcome, now_ms, last_available_ms, holder_eval_id, removed,
--           quarantined, expected}
--   outcome 'released'        the token held the lease: it ended, the executor
--                             is available again (or removed, if draining,
--                             or out of service, if quarantined)
--           'already_in_pool' the executor is available: a double release
--           'stale_lease'     another lease holds it: a double release; nothing
--                             changes, the holder keeps its executor
--           'not_leased'      unknown, removed, or neither leased nor available
--   expected     1 when this release comes by a designed path (ARGV[5]) and
--                its token is not among the outlived: the second
--                path of a lease (--cleanup both, a failed attempt's two
--                cleanups, an attempt that a re-entry replaced), absorbed
--                like any; 0 for a real double release: by a token whose
--                lease ended otherwise than by its release (reclaimed: its
--                holder outlived it), or by anything but a designed path (a
--                late callback replayed)
--   last_available_ms  when the executor last became available (its previous
--                      release, reclaim or registration), -1 if unknown
--   holder_eval_id     the eval holding the lease for 'stale_lease', else ''
--   removed            1 when a draining executor left the pool
--   quarantined        why this release took the executor out of service
--                      ('unavailable' or 'fail_rate'), else ''
--
-- The executor's record counts its releases, double releases, stale ones and
-- graded results, for the dashboard: no key of its own, so an executor costs
-- nothing more.

local url, token, verdict = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local lease, record = lease_of(url)

local function bump(field)
  record[field] = (tonumber(record[field]) or 0) + 1
end

local WINDOW = 20

if lease and lease.token == token then
  local eval_id = type(lease.eval_id) == 'string' and lease.eval_id or nil
  -- A quarantine is written to the record and the probe schedule
  -- together: the record, read already, says whether it is out.
  local out_of_service = tonumber(record.quarantined_at) ~= nil
  local quarantined = ''
  local avoid = false
  bump('releases')
  if verdict == 'unavailable' then
    bump('fails')
    avoid = ARGV[4] == '1' and eval_id ~= nil
    local after = setting('quarantine_after')
    if after > 0 and record.fails >= after and not out_of_service then
      quarantined = 'unavailable'
    end
  elseif verdict == 'errored' then
    -- Served: the eval's fault, not the executor's.
    record.fails = 0
    avoid = ARGV[4] == '1' and eval_id ~= nil
  elseif verdict == 'passed' or verdict == 'failed' then
    record.fails = 0
    bump(verdict)
    bump('window_n')
    if verdict == 'failed' then
      bump('window_failed')
    end
    if record.window_n >= WINDOW then
      local rate = setting('fail_rate')
      if rate > 0 and (tonumber(record.window_failed) or 0) / record.window_n >= rate and not out_of_service then
        quarantined = 'fail_rate'
      end
      record.window_n, record.window_failed = 0, 0
    end
  end
  out_of_service = out_of_service or quarantined ~= ''

  if quarantined ~= '' then
    quarantine(url, record, now, quarantined)
  end
  if avoid then
    redis.call('HSET', K_AVOID, eval_id, url)
  end
  -- end_lease writes the record, counters and all.
  local removed = end_lease(url, now, 'released', lease, record, out_of_service)
  return { 'released', now, tonumber(lease.available_since) or -1, '', removed, quarantined, 0 }
end

-- Not the lease's holder: nothing changes but the executor's counters.
local expected = ARGV[5] == '1' and not redis.call('ZSCORE', K_OUTLIVED, token) and 1 or 0
-- count notes an absorbed release in the executor's record: a duplicate
-- when expected, else a double release (and stale when another holds it).
local function count(stale)
  if record then
    if expected == 1 then
      bump('duplicates')
    else
      bump('double_releases')
      if stale then
        bump('stale_releases')
      end
    end
    put(url, record)
  end
end
if lease then
  count(true)
  return { 'stale_lease', now, tonumber(lease.available_since) or -1, tostring(lease.eval_id), 0, '', expected }
end
local since = redis.call('ZSCORE', K_AVAILABLE, url)
if since then
  count(false)
  return { 'already_in_pool', now, tonumber(since), '', 0, '', expected }
end
return { 'not_leased', now, -1, '', 0, '', expected }
