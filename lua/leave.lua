#!lua flags=allow-oom
-- leave.lua: an eval stops waiting for an executor (its attempt ended, its
-- worker stops). An executor handed to it in the race is given back at
-- once, to the next waiter, so that a waiter that leaves never keeps one.
--
-- KEYS: see lib.lua.
-- ARGV[1] eval_id
-- ARGV[2] token the eval waited with
-- Returns: {outcome, now_ms}: outcome 'left' (its entry is gone) |
-- 'released' (an executor had been handed to it: freed again) | 'none'
-- (nothing under that token).

local eval_id, token = ARGV[1], ARGV[2]
local now = now_ms()
local w = decode(redis.call('HGET', K_WAITING, eval_id))
if w and w.token == token then
  redis.call('ZREM', waiters_key(type(w.set) == 'string' and w.set or ''), eval_id)
  redis.call('HDEL', K_WAITING, eval_id)
  return { 'left', now }
end
local url = redis.call('HGET', K_HOLDERS, eval_id)
if url then
  local lease, record = lease_of(url)
  if lease and lease.token == token then
    end_lease(url, now, 'left', lease, record)
    return { 'released', now }
  end
end
return { 'none', now }
