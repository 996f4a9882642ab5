-- Takes back the jobs of workers whose lease expired (they died or lost Redis): waiting again
-- with the lost run counted, or failed when no attempts remain. One sweep per `lock_ms` across
-- all processes. Returns how many jobs it took back, or -1 if another process swept recently.
-- ARGV: now (seconds, for the jobs' records), token, lock_ms, error
if not redis.call('SET', base .. 'sweeper', ARGV[2], 'NX', 'PX', ARGV[3]) then
  return -1
end
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', server_ms(), 'LIMIT', 0, 100)
local requeued, dead = {}, {}
for _, token in ipairs(expired) do
  local theirs = active_key(token)
  local ids = redis.call('SPOP', theirs, 1000)
  for _, id in ipairs(ids) do
    take_back(id, ARGV[4], ARGV[1], requeued, dead)
  end
  if redis.call('SCARD', theirs) == 0 then
    redis.call('ZREM', leases, token)
  end
end
file_taken_back(requeued, dead)
return #requeued / 2 + #dead
