#!lua flags=allow-oom
-- run_cut.lua: record how many evals a run's submission had enqueued when
-- it was cut short. Allowed at maxmemory, where a submission is most often
-- cut: it overwrites one small field of a hash that exists.
--
-- Not prefixed by lib.lua.
-- KEYS[1] meta  HASH  the run's name, pool, size...
-- ARGV[1] how many evals were enqueued
-- Returns 1, or 0 when the run is gone.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'enqueued', ARGV[1])
return 1
