-- The registry of worker processes, one slot (`{workers}`), so that finding dead ones costs the
-- same however many queues there are. A process's token is in `leases` (a sorted set by expiry,
-- Redis's clock) while it renews it; `queues:<token>` lists the queues where it leased jobs.
-- KEYS: leases, sweeper lock. ARGV[1] = the key prefix of the token sets, ARGV[2] = operation:
--   'register' (token, lease_ms, queue): the token is live, and leases jobs in `queue`.
--   'renew' (token, lease_ms): the token is live. Returns 1 if it had been dropped (found
--       expired and swept): the process must register its queues again.
--   'expired' (token, lock_ms, limit): when no other process swept within `lock_ms`, up to
--       `limit` expired tokens with their queues: {token, {queue, ...}, ...}; else {}.
--   'forget' (token): an expired token whose queues were swept is dropped.
--   'leave' (token): a process that closed, holding no jobs, drops its token.
local leases, lock, base, op = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if op == 'register' or op == 'renew' then
  local added = redis.call('ZADD', leases, now_ms + tonumber(ARGV[4]), ARGV[3])
  if op == 'register' then
    redis.call('SADD', base .. ARGV[3], ARGV[5])
  end
  return added
elseif op == 'expired' then
  if not redis.call('SET', lock, ARGV[3], 'NX', 'PX', ARGV[4]) then
    return {}
  end
  local out = {}
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[5]))) do
    out[#out + 1] = token
    out[#out + 1] = redis.call('SMEMBERS', base .. token)
  end
  return out
elseif op == 'forget' then
  local expiry = tonumber(redis.call('ZSCORE', leases, ARGV[3]))
  if expiry and expiry <= now_ms then
    redis.call('ZREM', leases, ARGV[3])
    redis.call('DEL', base .. ARGV[3])
  end
  return 1
elseif op == 'leave' then
  redis.call('ZREM', leases, ARGV[3])
  redis.call('DEL', base .. ARGV[3])
  return 1
end
return redis.error_reply('unknown workers operation ' .. tostring(op))
