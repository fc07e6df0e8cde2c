-- reap.lua: end leases whose deadline passed more than the grace ago,
-- oldest first.
--
-- KEYS: see lib.lua.
-- ARGV[1] how many to reclaim at most in this call
-- ARGV[2] grace in ms (see reclaim_expired in lib.lua)
-- Returns: the number reclaimed; the caller repeats while it equals ARGV[1],
-- so that Redis is never blocked by a long walk.

return reclaim_expired(now_ms(), tonumber(ARGV[1]), tonumber(ARGV[2]))
