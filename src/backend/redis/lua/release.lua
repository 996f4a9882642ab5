-- Hands back leased jobs that never started: waiting again in their old place, the attempt
-- not counted. Only the lease holder may.
-- ARGV: token, count, then per job: id, attempt
local token, count = ARGV[1], tonumber(ARGV[2])
local ranked, ids = {}, {}
for n = 0, count - 1 do
  local id, attempt = ARGV[3 + 2 * n], ARGV[4 + 2 * n]
  local key = job_key(id)
  local held = redis.call('HMGET', key, 's', 'a', 'tk', 'p', 'q')
  if held[1] == 'active' and held[2] == attempt and held[3] == token then
    redis.call('HSET', key, 's', 'waiting')
    redis.call('HINCRBY', key, 'a', -1)
    redis.call('HDEL', key, 'st', 'tk')
    ids[#ids + 1] = id
    ranked[#ranked + 1] = rank(tonumber(held[4]), tonumber(held[5]))
    ranked[#ranked + 1] = id
  end
end
if #ids > 0 then
  zrem_all(active, ids)
  zadd_all(waiting, ranked)
  signal()
end
return #ids
