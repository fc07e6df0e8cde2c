#!lua name=evalpool_floor
-- floor.lua: what an acquire+release pair costs Redis with none of
-- evalpool's logic, for section 1 of BENCHMARKS.md: the commands alone, on
-- the pool's own keys, in the pool's key order (internal/keys).
--
-- floor_acquire, floor_release: the commands the guarantees need on the
-- common path: the pool's time (TIME, HMGET clock), the cancellation
-- (ZSCORE cancelled), re-entry (HGET holders), the executor idle longest
-- (ZPOPMIN available), the lease in its record (HGET, HSET executors), its
-- deadline (ZADD deadlines) and holder (HSET holders); the release: the
-- time, the record, the deadline (ZREM), the holder (HDEL), the wait lists'
-- guard (HLEN waiting), the index (ZADD available), the history (XADD).
-- floor6_acquire, floor6_release: six commands each, the FCALL included,
-- with none of clock steps, cancellation, re-entry, wait lists or history.
--
-- KEYS: the pool's 18 (see lua/lib.lua). ARGV: acquire eval_id, token;
-- release url. Returns: the executor's url (acquire), 'released'.

local function lease(url, since, now, ARGV)
  return { token = ARGV[2], eval_id = ARGV[1], fence = now, ttl = 60000, acquired_at = now, available_since = since }
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

redis.register_function('floor_acquire', function(KEYS, ARGV)
  local now = now_ms()
  redis.call('HMGET', KEYS[18], 'skew', 'last', 'promised')
  redis.call('ZSCORE', KEYS[15], ARGV[1])
  redis.call('HGET', KEYS[5], ARGV[1])
  local head = redis.call('ZPOPMIN', KEYS[2])
  local record = cjson.decode(redis.call('HGET', KEYS[1], head[1]))
  record.fence, record.lease = now, lease(head[1], tonumber(head[2]), now, ARGV)
  redis.call('HSET', KEYS[1], head[1], cjson.encode(record))
  redis.call('ZADD', KEYS[4], now + 60000, head[1])
  redis.call('HSET', KEYS[5], ARGV[1], head[1])
  return head[1]
end)

redis.register_function('floor_release', function(KEYS, ARGV)
  local now = now_ms()
  redis.call('HMGET', KEYS[18], 'skew', 'last', 'promised')
  local record = cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))
  local l = record.lease
  record.lease = nil
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[5], l.eval_id)
  redis.call('HLEN', KEYS[11])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('XADD', KEYS[16], 'MAXLEN', '~', 100000, '*', 'url', ARGV[1], 'eval', l.eval_id,
    'from', tostring(l.acquired_at), 'how', 'released')
  return 'released'
end)

redis.register_function('floor6_acquire', function(KEYS, ARGV)
  local now = now_ms()
  local head = redis.call('ZPOPMIN', KEYS[2])
  local record = cjson.decode(redis.call('HGET', KEYS[1], head[1]))
  record.fence, record.lease = now, lease(head[1], tonumber(head[2]), now, ARGV)
  redis.call('HSET', KEYS[1], head[1], cjson.encode(record))
  redis.call('ZADD', KEYS[4], now + 60000, head[1])
  return head[1]
end)

redis.register_function('floor6_release', function(KEYS, ARGV)
  local now = now_ms()
  local record = cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))
  record.lease = nil
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  return 'released'
end)
