#!lua flags=allow-oom
-- result.lua: write an eval's result into its Asynq task hash, only while
-- the task is there. Not prefixed by lib.lua: its key is Asynq's.
--
-- KEYS[1] the task's hash (asynq:{<queue>}:t:<id>, tasks.ResultKey)
-- ARGV[1] the result
-- Returns 1 when written, 0 when the task is gone (Redis's data went back,
-- or its retention passed): a late result never recreates the task as a
-- stub, which would refuse the eval's enqueue again by its ID. It runs at
-- maxmemory too: the eval ran, and its result is what it was for.

if redis.call('HEXISTS', KEYS[1], 'msg') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'result', ARGV[1])
return 1
