#!lua
-- admit_run.lua: admit evals of a run to its pool's queue: move up to
-- ARGV[1] of its queued eval keys into admitted, within the run's cap, and
-- return their specs for the caller to enqueue. O(admitted + skipped).
--
-- Not prefixed by lib.lua: its keys are the run's, those of run_finish.lua
-- in its order (KEYS[1..9]: done, counts, running, meta, evals, ended,
-- specs, queued, admitted).
-- ARGV[1] how many to admit at most
-- ARGV[2] now, in ms (Redis's clock, which the caller read)
-- Returns {admitted, queued, spec...}: how many of the run's evals are in
-- flight now, how many still wait, and the specs admitted, in order. A key
-- that ended already (cancelled before its turn) or is in flight already
-- (queued twice, by a resume) is skipped, at most SKIP of them a call.

local SKIP = 1000
local room = tonumber(ARGV[1]) or 0
local cap = tonumber(redis.call('HGET', KEYS[4], 'max_executors')) or 0
local n = redis.call('SCARD', KEYS[9])
if cap > 0 then
  room = math.min(room, cap - n)
end
local out = { 0, 0 }
local skipped = 0
while room > 0 and skipped < SKIP do
  local key = redis.call('LPOP', KEYS[8])
  if not key then
    break
  end
  local spec = redis.call('HGET', KEYS[7], key)
  if spec and redis.call('HEXISTS', KEYS[1], key) == 0 and redis.call('SADD', KEYS[9], key) == 1 then
    out[#out + 1] = spec
    room = room - 1
  else
    skipped = skipped + 1
  end
end
if #out > 2 then
  redis.call('HSET', KEYS[4], 'admitted_at', ARGV[2])
  local ttl = redis.call('PTTL', KEYS[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[9], ttl)
  end
end
out[1] = redis.call('SCARD', KEYS[9])
out[2] = redis.call('LLEN', KEYS[8])
return out
