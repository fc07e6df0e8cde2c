#!lua
-- run_reopen.lua: take back the ends of some evals of a run, so that they
-- run again (a retry) and their next end counts; O(evals).
--
-- Not prefixed by lib.lua: its keys are the run's, those of run_finish.lua
-- in its order:
--   KEYS[1] done     HASH  eval key -> record JSON {status, score?, ...}
--   KEYS[2] counts   HASH  status -> evals; retries; score_sum; score_n;
--                          metric_sum:NAME; metric_n:NAME; metrics;
--                          reopened -> ends taken back, ever (a reader
--                          that tallies the ends as they come starts
--                          over when it moves: run.Store.Summarize)
--   KEYS[3] running  HASH  eval key -> executor, while an attempt runs
--   KEYS[4] meta     HASH  the run's name, pool, size, reconciled...
--   KEYS[5] evals    LIST  the run's eval keys, in order
--   KEYS[6] ended    LIST  the ended eval keys, in the order they ended
--   KEYS[7] specs    HASH  eval key -> its task's payload, until it ends
--   KEYS[8] queued   LIST  eval keys waiting for admission (admit_run.lua)
--   KEYS[9] admitted SET   eval keys admitted that have not ended
-- ARGV[1] how long the run's keys live from now, in ms, unless the run's
--         meta names its own retention (ms)
-- ARGV[2] the statuses to reopen, comma-separated (errored,failed)
-- ARGV[3..] per eval, its key and its position (from 0) in evals: the
--         reconciliation's cursor goes back to the first reopened, so that
--         it looks at them again (run.Store.Reconcile)
-- Returns the keys reopened: those whose record's status is wanted. An
-- eval not ended, or ended otherwise, is left alone. Its ended log entry
-- stays (the log only grows): its next end is logged again, and the
-- record's "p" tells that end from this one.

-- unsum takes v back out of a sum of the counts and its count. A sum
-- whose count is back to 0 goes, and out of names when given: Redis sums in
-- long double, so that taking back a value far larger than the rest
-- (1e308, beside 0.5) may leave a remainder, which a sum of no value must
-- not keep.
local function unsum(sum, n, v, names)
  if redis.call('HINCRBY', KEYS[2], n, -1) <= 0 then
    redis.call('HDEL', KEYS[2], sum, n)
    if names then
      redis.call('HINCRBY', KEYS[2], names, -1)
    end
  else
    -- %.17g: the value exactly as Finish added it.
    redis.call('HINCRBYFLOAT', KEYS[2], sum, string.format('%.17g', -v))
  end
end

local wanted = {}
for s in string.gmatch(ARGV[2], '[^,]+') do
  wanted[s] = true
end
local reopened, first = {}, nil
for i = 3, #ARGV, 2 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local rec = cjson.decode(raw)
    -- A record written before the short form spells its fields out.
    local status, score, retries, metrics = rec.s, rec.c, rec.r, rec.m
    if status == nil then
      status, score, retries, metrics = rec.status, rec.score, rec.retries, rec.metrics
    end
    if wanted[status] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      redis.call('HINCRBY', KEYS[2], status, -1)
      if type(retries) == 'number' and retries ~= 0 then
        redis.call('HINCRBY', KEYS[2], 'retries', -retries)
      end
      if type(score) == 'number' then
        unsum('score_sum', 'score_n', score)
      end
      -- A metric run_finish.lua summed (a graded eval's, finite); an end
      -- recorded before it summed metrics has no count to take back from.
      if (status == 'passed' or status == 'failed') and type(metrics) == 'table' then
        for name, v in pairs(metrics) do
          if type(v) == 'number' and tonumber(redis.call('HGET', KEYS[2], 'metric_n:' .. name) or 0) > 0 then
            unsum('metric_sum:' .. name, 'metric_n:' .. name, v, 'metrics')
          end
        end
      end
      reopened[#reopened + 1] = ARGV[i]
      local pos = tonumber(ARGV[i + 1])
      if first == nil or pos < first then
        first = pos
      end
    end
  end
end
if first then
  redis.call('HINCRBY', KEYS[2], 'reopened', #reopened)
  local at = redis.call('HGET', KEYS[4], 'reconciled')
  if at and tonumber(at) > first then
    redis.call('HSET', KEYS[4], 'reconciled', first)
  end
end
local ttl = redis.call('HGET', KEYS[4], 'retention') or ARGV[1]
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return reopened
