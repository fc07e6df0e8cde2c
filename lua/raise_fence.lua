#!lua
-- raise_fence.lua: raise a pool's fence counter to a fence an executor
-- reports it has seen, so that the pool's next grant is above it. It only
-- ever raises, and never past Redis's clock in ms plus a bound, so that no
-- executor's word can push the counter toward overflow. Not prefixed by
-- lib.lua: it touches the fence counter alone.
--
-- KEYS[1] fence  STRING the pool's fence counter (keys.Pool.Fence)
-- ARGV[1] the fence seen: a positive integer in decimal, at most 15 digits
-- ARGV[2] how far ahead of Redis's clock, in ms, it may be
-- Returns 1 when it raised the counter, 0 when the counter was already at
-- or above the fence; an error reply EVALPOOL_INVALID for a fence that is
-- not an integer or is past the bound, EVALPOOL_FOREIGN_DATA when the key
-- holds a string that is not an integer (WRONGTYPE when it is no string).

local seen = ARGV[1]
if not string.match(seen, '^[1-9]%d*$') or #seen > 15 then
  return redis.error_reply('EVALPOOL_INVALID fence ' .. string.format('%q', string.sub(seen, 1, 32)) .. ' is not a positive integer of at most 15 digits')
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(seen) > now_ms + tonumber(ARGV[2]) then
  return redis.error_reply('EVALPOOL_INVALID fence ' .. seen .. ' is more than ' .. ARGV[2] .. ' ms ahead of Redis\'s clock (' .. now_ms .. ' ms): no pool granted it')
end
local cur = redis.call('GET', KEYS[1])
if cur and not string.match(cur, '^%-?%d+$') then
  return redis.error_reply('EVALPOOL_FOREIGN_DATA ' .. KEYS[1] .. ' holds ' .. string.format('%q', string.sub(cur, 1, 32)) .. ', not an integer')
end
if cur and (#cur > #seen or #cur == #seen and cur >= seen) and string.sub(cur, 1, 1) ~= '-' then
  return 0
end
redis.call('SET', KEYS[1], seen)
return 1
