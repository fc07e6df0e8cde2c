#!lua flags=allow-oom
-- clock.lua: a worker's tick, once a second: it takes a step of Redis's
-- clock out of the pool's time (see clock_read in lib.lua) and promises the
-- next tick within CLOCK_PROMISE, and it bumps the pool's generation, which
-- only grows, so that a worker sees Redis's data go back (a snapshot
-- restored, a failover to a replica that had not caught up).
--
-- KEYS: see lib.lua.
-- ARGV[1] the highest generation this worker has seen of the pool (0: none)
-- ARGV[2] 'stop' when the worker stops ticking: its promise is withdrawn
--         (another worker's next tick makes one again)
-- ARGV[3] the pool's time (ms) this worker's last tick saw (0: none)
-- ARGV[4] the ms since this worker sent its last tick, on its monotonic
--         clock: with ARGV[3], the pool's time now as the worker knows it,
--         against which a step of Redis's clock shows at every tick
-- Returns: {gen, now_ms, rewound, skew_ms, steps, step_ms, step_at_ms,
--           rewinds, rewound_at_ms, back_ms}
--   gen      the pool's generation after this tick
--   back_ms  how far the data went back when ARGV[1] was not below the
--            stored generation: ARGV[3] less the last tick that survived;
--            else 0. A pool whose clock is gone with the rest (FLUSHALL) is
--            a loss, not a rewind, and starts again at 1
--   rewound  how many generations went missing when the data went back
--            by more than REWIND_MIN: a rewind, noted for Check; else 0. A
--            failover to a replica a little behind loses the last writes,
--            a tick among them, and is no rewind
--   skew_ms  how far the pool's time is behind Redis's clock
--   steps, step_ms, step_at_ms  how many steps of Redis's clock the pool
--            took out, the last one's size (negative: back) and when
--   rewinds, rewound_at_ms      how many rewinds were seen, the last when

local REWIND_MIN = 2000
-- A step forward smaller than this, between two ticks of one worker, is
-- left in: the grace covers it, and a tick held up in Redis's queue looks
-- like one.
local HONEST_MIN = 1000000
local seen, seen_at, elapsed = tonumber(ARGV[1]) or 0, tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
local stored = redis.call('HMGET', K_CLOCK, 'last', 'gen')
local survived, went_back = tonumber(stored[1]) or 0, seen > 0 and (tonumber(stored[2]) or 0) < seen
local now, step = clock_read()
if seen_at > 0 and not went_back then
  -- The worker's own clock says what the pool's time is: a step is what
  -- Redis's clock ran past it, promise or not, so that steps one after
  -- another never run the pool's time faster than the worker's.
  local honest = (seen_at + elapsed) * 1000
  local raw = now + (step or 0)
  if raw - honest > HONEST_MIN then
    now = math.max(survived, honest)
    step = raw - now
  elseif step and step > 0 then
    now, step = raw, nil
  end
elseif went_back then
  -- The data went back: the gap since the snapshot's promise is not a step.
  now, step = now + (step or 0), nil
end
if step then
  redis.call('HINCRBY', K_CLOCK, 'skew', step)
  redis.call('HINCRBY', K_CLOCK, 'steps', 1)
  redis.call('HSET', K_CLOCK, 'step_ms', math.floor(step / 1000), 'step_at', math.floor((now + step) / 1000))
end
local gen = redis.call('HINCRBY', K_CLOCK, 'gen', 1)
local rewound, back = 0, 0
if gen > 1 and went_back then
  back = math.max(1, seen_at - math.floor(survived / 1000))
  if back > REWIND_MIN then
    rewound = seen + 1 - gen
    redis.call('HSET', K_CLOCK, 'rewound_at', math.floor(now / 1000))
    redis.call('HINCRBY', K_CLOCK, 'rewinds', 1)
  end
  gen = seen + 1
  redis.call('HSET', K_CLOCK, 'gen', gen)
end
redis.call('HSET', K_CLOCK, 'last', now)
if ARGV[2] == 'stop' then
  redis.call('HDEL', K_CLOCK, 'promised')
else
  redis.call('HSET', K_CLOCK, 'promised', now + CLOCK_PROMISE)
end
local c = redis.call('HMGET', K_CLOCK, 'skew', 'steps', 'step_ms', 'step_at', 'rewinds', 'rewound_at')
return {
  gen, math.floor(now / 1000), rewound, math.floor((tonumber(c[1]) or 0) / 1000),
  tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0, tonumber(c[5]) or 0, tonumber(c[6]) or 0, back,
}
