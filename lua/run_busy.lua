-- run_busy.lua: the prelude of the run scripts that count a run's
-- executor time (run_finish.lua, run_attempt.lua).

-- spend adds took ms of executor time, ending now, to the run's counts
-- (KEYS[2]): by 10 s slot of Redis's clock, in a ring of 7 fields
-- busy0..busy6, "slot:ms", the last minute's, whole or in part, for
-- run.Store.Share. The time goes to the slots it spanned.
local function spend(counts, took)
  if took <= 0 then
    return
  end
  local SLOT, RING = 10000, 7
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = math.floor(now / SLOT)
  for slot = math.max(math.floor((now - took) / SLOT), last - RING + 1), last do
    local ms = math.min((slot + 1) * SLOT, now) - math.max(slot * SLOT, now - took)
    local field = 'busy' .. (slot % RING)
    local at, sum = string.match(redis.call('HGET', counts, field) or '', '^(%d+):(%d+)$')
    at, sum = tonumber(at) or -1, tonumber(sum) or 0
    if at < slot then
      sum = 0
    end
    if at <= slot then
      redis.call('HSET', counts, field, string.format('%d:%d', slot, sum + ms))
    end
  end
end
