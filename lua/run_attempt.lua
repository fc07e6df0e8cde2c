#!lua flags=allow-oom
-- run_attempt.lua: an attempt of a run's eval ended with no graded result
-- (it failed and is retried, was handed back, errored at last or was
-- cancelled): its executor is held no more, unless a newer attempt holds
-- another, and its time counts in the run's executor time. O(1).
--
-- Prefixed by run_busy.lua. Its keys are the run's, those of
-- run_finish.lua in its order (KEYS[1..9]); it touches KEYS[2] counts and
-- KEYS[3] running.
-- ARGV[1] eval key
-- ARGV[2] the executor the attempt held
-- ARGV[3] how long it held it, in ms
-- Returns 1 when the eval was noted running on that executor, else 0.

spend(KEYS[2], tonumber(ARGV[3]) or 0)
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 1
end
return 0
