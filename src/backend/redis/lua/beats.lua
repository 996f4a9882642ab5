-- The registry of live worker processes that operators see (`rnode-queue workers`): each
-- process's description by id, and when its last heartbeat expires (Redis's clock). Apart from
-- the lease registry (`workers.lua`), which recovers jobs: this one only informs.
-- KEYS: beats (sorted set: id -> expiry ms), info (hash: id -> description).
-- ARGV[1] = operation:
--   'beat' (id, ttl_ms, description): listed until ttl_ms from now. Drops a few expired
--       ids, so that workers killed without a word do not pile up unlisted.
--   'list': the descriptions of the ids not expired; expired ones are dropped.
--   'leave' (id): dropped.
local beats, info, op = KEYS[1], KEYS[2], ARGV[1]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local function drop_expired(limit)
  local expired = redis.call('ZRANGEBYSCORE', beats, '-inf', now_ms, 'LIMIT', 0, limit)
  if #expired > 0 then
    redis.call('ZREM', beats, unpack(expired))
    redis.call('HDEL', info, unpack(expired))
  end
end
if op == 'beat' then
  drop_expired(10)
  redis.call('ZADD', beats, now_ms + tonumber(ARGV[3]), ARGV[2])
  redis.call('HSET', info, ARGV[2], ARGV[4])
  return 1
elseif op == 'list' then
  drop_expired(1000)
  local live = redis.call('ZRANGEBYSCORE', beats, '(' .. now_ms, '+inf', 'LIMIT', 0, 1000)
  if #live == 0 then
    return {}
  end
  return redis.call('HMGET', info, unpack(live))
elseif op == 'leave' then
  redis.call('ZREM', beats, ARGV[2])
  redis.call('HDEL', info, ARGV[2])
  return 1
end
return redis.error_reply('unknown beats operation ' .. tostring(op))
