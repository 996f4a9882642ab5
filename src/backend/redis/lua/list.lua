-- Jobs of one state: {id, fields, ...}. Waiting and delayed in run order, active by worker,
-- completed and failed newest first.
-- ARGV: state (1 waiting, 2 delayed, 3 active, 4 completed, 5 failed), limit, offset (that
-- many skipped first: a page, read by rank without loading the jobs before it)
local which, limit, offset = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3] or 0)
local ids = {}
if limit <= 0 then
  return {}
end
if which == 3 then
  local seen = 0
  for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    for _, id in ipairs(redis.call('SMEMBERS', active_key(token))) do
      seen = seen + 1
      if seen > offset and #ids < limit then
        ids[#ids + 1] = id
      end
    end
  end
elseif which >= 4 then
  -- Newest at the tail: the page is counted back from it.
  local newest = redis.call('LRANGE', KEYS[which], -(offset + limit), -(offset + 1))
  for n = #newest, 1, -1 do
    ids[#ids + 1] = newest[n]
  end
else
  ids = redis.call('ZRANGE', KEYS[which], offset, offset + limit - 1)
end
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', job_key(id))
end
return out
