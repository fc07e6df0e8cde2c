-- reap.lua: end leases whose deadline has passed, oldest first.
--
-- KEYS: see lib.lua.
-- ARGV[1] how many to reclaim at most in this call
-- Returns: the number reclaimed; the caller repeats while it equals ARGV[1],
-- so that Redis is never blocked by a long walk.

return reclaim_expired(now_ms(), tonumber(ARGV[1]))
