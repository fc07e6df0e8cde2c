#!lua
-- run_finish_many.lua: record that many evals of one run ended the same
-- way (a cancel), each once; O(evals).
--
-- Not prefixed by lib.lua: its keys are the run's, those of run_finish.lua
-- in its order (KEYS[1..9]: done, counts, running, meta, evals, ended,
-- specs, queued, admitted).
-- ARGV[1] status (cancelled)
-- ARGV[2] the record (JSON object, at least one field), the same for
--         each, stored with its "p" as in run_finish.lua
-- ARGV[3] how long the run's keys live from now, in ms, unless the run's
--         meta names its own retention (ms)
-- ARGV[4..] the evals' keys
-- Returns how many were recorded: an eval that had ended keeps its end, as
-- in run_finish.lua.

local n = 0
for i = 4, #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('SREM', KEYS[9], ARGV[i])
  redis.call('HDEL', KEYS[7], ARGV[i])
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    local pos = redis.call('RPUSH', KEYS[6], ARGV[i])
    redis.call('HSET', KEYS[1], ARGV[i], '{"p":' .. pos .. ',' .. string.sub(ARGV[2], 2))
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], n)
end
local ttl = redis.call('HGET', KEYS[4], 'retention') or ARGV[3]
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return n
