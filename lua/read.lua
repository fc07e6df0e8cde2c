#!lua flags=no-writes
-- read.lua: read commands run as one step: a consistent read, as a MULTI of
-- them would give, that Redis still serves at maxmemory, where it refuses
-- every command queued in a MULTI, reads included.
--
-- Not prefixed by lib.lua.
-- KEYS: the keys read, all in one hash slot (a cluster routes by them).
-- ARGV: per command, its number of words, then its words.
-- Returns: per command, its reply (a nil reply as nil), or its error as an
-- error reply, so that one command's error does not hide the others'.

local out, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  out[#out + 1] = redis.pcall(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return out
