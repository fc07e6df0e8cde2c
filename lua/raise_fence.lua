#!lua
-- raise_fence.lua: raise the fence an executor's record keeps to a fence
-- the executor reports it has seen, so that its next grant is above it. It
-- only ever raises, and never past Redis's clock in ms plus a bound, so that
-- no executor's word can push a fence toward overflow. Not prefixed by
-- lib.lua: it touches one record alone.
--
-- KEYS[1] executors HASH url -> executor record JSON (lib.lua)
-- ARGV[1] the executor's URL
-- ARGV[2] the fence seen: a positive integer in decimal, at most 15 digits
-- ARGV[3] how far ahead of Redis's clock, in ms, it may be
-- Returns 1 when it raised the fence, 0 when the record's was already at
-- or above it or the executor is not registered; an error reply
-- EVALPOOL_INVALID for a fence that is not an integer or is past the bound,
-- EVALPOOL_FOREIGN_DATA when the record is not a JSON object.

local url, seen = ARGV[1], ARGV[2]
if not string.match(seen, '^[1-9]%d*$') or #seen > 15 then
  return redis.error_reply('EVALPOOL_INVALID fence ' .. string.format('%q', string.sub(seen, 1, 32)) .. ' is not a positive integer of at most 15 digits')
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(seen) > now_ms + tonumber(ARGV[3]) then
  return redis.error_reply('EVALPOOL_INVALID fence ' .. seen .. ' is more than ' .. ARGV[3] .. ' ms ahead of Redis\'s clock (' .. now_ms .. ' ms): no pool granted it')
end
local raw = redis.call('HGET', KEYS[1], url)
if not raw then
  return 0
end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' then
  return redis.error_reply('EVALPOOL_FOREIGN_DATA the record of ' .. url .. ' in ' .. KEYS[1] .. ' is not a JSON object')
end
if (tonumber(record.fence) or 0) >= tonumber(seen) then
  return 0
end
record.fence = tonumber(seen)
redis.call('HSET', KEYS[1], url, cjson.encode(record))
return 1
