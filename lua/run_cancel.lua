#!lua flags=allow-oom
-- run_cancel.lua: delete many pending evals of one queue from Asynq, so
-- that they never run; O(evals), with no scan of the pending list when
-- they are deleted in the order they were enqueued.
--
-- Not prefixed by lib.lua: its keys are Asynq's (v0.26), all under the
-- queue's hash tag {<queue>}:
--   KEYS[1] pending  LIST  asynq:{<queue>}:pending, task IDs; Asynq pushes
--                          on the left and takes from the right
--   KEYS[2..n+1]     HASH  asynq:{<queue>}:t:<id>, each eval's task
-- ARGV[1..n] the evals' IDs, in KEYS' order
-- Returns one code per eval: 1 deleted (it was pending), 0 not found,
-- 2 ended (completed or archived), 3 in another state (active, retry,
-- scheduled), left for Asynq's own delete or cancel. It runs at maxmemory:
-- it only frees memory.

local out = {}
for i = 1, #ARGV do
  local state = redis.call('HGET', KEYS[i + 1], 'state')
  if not state then
    out[i] = 0
  elseif state == 'completed' or state == 'archived' then
    out[i] = 2
  elseif state == 'pending' and redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('DEL', KEYS[i + 1])
    out[i] = 1
  else
    out[i] = 3
  end
end
return out
