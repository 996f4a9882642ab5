-- Jobs of one state: {id, fields, ...}. Waiting and delayed in run order, active by lease,
-- completed and failed newest first.
-- ARGV: state (1 waiting, 2 delayed, 3 active, 4 completed, 5 failed), limit
local which, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids
if which >= 4 then
  ids = redis.call('ZREVRANGE', KEYS[which], 0, limit - 1)
else
  ids = redis.call('ZRANGE', KEYS[which], 0, limit - 1)
end
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', job_key(id))
end
return out
