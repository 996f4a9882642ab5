-- Returns jobs whose lease expired (their worker died or lost Redis) to waiting, the lost run
-- counted as an attempt; a job with no attempts left fails. One sweep per `lock_ms` across all
-- processes. Returns how many jobs it took back, or -1 if another process swept recently.
-- ARGV: now_ms, now, token, lock_ms, error
if not redis.call('SET', base .. 'sweeper', ARGV[3], 'NX', 'PX', ARGV[4]) then
  return -1
end
local expired = redis.call('ZRANGEBYSCORE', active, '-inf', ARGV[1], 'LIMIT', 0, 1000)
local ranked, dead = {}, {}
for _, id in ipairs(expired) do
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'a', 'm', 'p', 'q')
  redis.call('HDEL', key, 'tk')
  if job[1] then
    if tonumber(job[1]) < tonumber(job[2]) then
      redis.call('HSET', key, 's', 'waiting', 'e', ARGV[5])
      ranked[#ranked + 1] = rank(tonumber(job[3]), tonumber(job[4]))
      ranked[#ranked + 1] = id
    else
      redis.call('HSET', key, 's', 'failed', 'f', ARGV[2], 'e', ARGV[5])
      dead[#dead + 1] = ARGV[1]
      dead[#dead + 1] = id
    end
  end
end
if #expired > 0 then
  zrem_all(active, expired)
  zadd_all(waiting, ranked)
  zadd_all(failed, dead)
  if #ranked > 0 then
    redis.call('HINCRBY', meta, 'rt', #ranked / 2)
    signal()
  end
  if #dead > 0 then
    redis.call('HINCRBY', meta, 'ft', #dead / 2)
  end
end
return #expired
