#!lua
-- run_finish.lua: record how an eval of a run ended, once; O(1).
--
-- Not prefixed by lib.lua: its keys are a run's, not a pool's, all under
-- the hash tag {<run>}:
--   KEYS[1] done     HASH  eval key -> record JSON {status, score?, ...}
--   KEYS[2] counts   HASH  status -> evals; retries; score_sum; score_n;
--                          metric_sum:NAME; metric_n:NAME (graded evals);
--                          metrics -> the names summed
--                          busy0..busy6 -> "slot:ms" (run_busy.lua);
--                          reopened (run_reopen.lua)
--   KEYS[3] running  HASH  eval key -> executor, while an attempt runs
--   KEYS[4] meta     HASH  the run's name, pool, size...
--   KEYS[5] evals    LIST  the run's eval keys, in order
--   KEYS[6] ended    LIST  the ended eval keys, in the order they ended
--   KEYS[7] specs    HASH  eval key -> its task's payload, until it ends
--   KEYS[8] queued   LIST  eval keys waiting for admission (admit_run.lua)
--   KEYS[9] admitted SET   eval keys admitted that have not ended
-- ARGV[1] eval key
-- ARGV[2] status: passed | failed | errored | cancelled
-- ARGV[3] the record (JSON object, at least one field); it is stored with
--         "p": its position in the ended log, from 1, so that a reader of
--         the log tells this end from an older one of the same eval
--         (reopened by run_reopen.lua, then ended again)
-- ARGV[4] retries the eval spent
-- ARGV[5] score, or '' for none
-- ARGV[6] how long the run's keys live from now, in ms, unless the run's
--         meta names its own retention (ms)
-- ARGV[7] how long the attempt held its executor, in ms ('' or 0: none)
-- ARGV[8] how many metrics' names the run sums at most: a name past them
--         is not summed
-- ARGV[9..] the metrics to sum, name then value, each pair's (a graded
--         eval's finite values; none otherwise)
-- Returns 1 when recorded, 0 when the eval had ended already: the first
-- end wins (a cancel, then the in-flight attempt finishing, counts once).

-- An attempt of an eval that had ended (run again after Redis's data went
-- back) is running no more either.
-- An ended eval is in flight no more, and needs its spec no more.
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[9], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
local pos = redis.call('RPUSH', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], '{"p":' .. pos .. ',' .. string.sub(ARGV[3], 2))
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'retries', tonumber(ARGV[4]) or 0)
if ARGV[5] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[2], 'score_sum', ARGV[5])
  redis.call('HINCRBY', KEYS[2], 'score_n', 1)
end
for i = 9, #ARGV - 1, 2 do
  local n = 'metric_n:' .. ARGV[i]
  if redis.call('HEXISTS', KEYS[2], n) == 1 or tonumber(redis.call('HGET', KEYS[2], 'metrics') or 0) < tonumber(ARGV[8]) then
    if redis.call('HINCRBY', KEYS[2], n, 1) == 1 then
      redis.call('HINCRBY', KEYS[2], 'metrics', 1)
    end
    redis.call('HINCRBYFLOAT', KEYS[2], 'metric_sum:' .. ARGV[i], ARGV[i + 1])
  end
end
spend(KEYS[2], tonumber(ARGV[7]) or 0)
local ttl = redis.call('HGET', KEYS[4], 'retention') or ARGV[6]
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 1
