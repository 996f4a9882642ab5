-- Hands back leased jobs that never started: waiting again in their old place, the attempt
-- not counted. Only the lease holder may.
-- ARGV: token, count, then per job: id, attempt
local mine, count = active_key(ARGV[1]), tonumber(ARGV[2])
local ranked = {}
for n = 0, count - 1 do
  local id, attempt = ARGV[3 + 2 * n], ARGV[4 + 2 * n]
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'a', 'k')
  if job[1] == attempt and redis.call('SREM', mine, id) == 1 then
    redis.call('HSET', key, 's', 'waiting', 'a', tonumber(attempt) - 1)
    redis.call('HDEL', key, 'st')
    ranked[#ranked + 1] = job[2]
    ranked[#ranked + 1] = id
  end
end
if #ranked > 0 then
  sliced('ZADD', waiting, ranked)
  signal()
end
return #ranked / 2
