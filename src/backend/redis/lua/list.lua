-- Jobs of one state: {id, fields, ...}. Waiting jobs in run order (highest priority first),
-- delayed by due time, active by worker, completed and failed newest first.
-- ARGV: state (1 waiting, 2 delayed, 3 active, 4 completed, 5 failed), limit, offset (that
-- many skipped first: a page, read by rank without loading the jobs before it)
local which, limit, offset = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3] or 0)
local states = { 'waiting', 'delayed', 'active', 'completed', 'failed' }
local ids, details = {}, {}
if limit <= 0 then
  return {}
end
if which == 1 then
  local skip = offset
  for _, p in ipairs(PRIORITIES) do
    if #ids >= limit then
      break
    end
    local list = waiting(p)
    local length = redis.call('LLEN', list)
    if skip >= length then
      skip = skip - length
    else
      for _, id in ipairs(redis.call('LRANGE', list, skip, skip + limit - #ids - 1)) do
        ids[#ids + 1] = id
      end
      skip = 0
    end
  end
elseif which == 3 then
  local seen = 0
  for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    local all = redis.call('HGETALL', active_key(token))
    for n = 1, #all, 2 do
      seen = seen + 1
      if seen > offset and #ids < limit then
        ids[#ids + 1] = all[n]
        details[#ids] = lease_of(all[n + 1])
      end
    end
  end
elseif which >= 4 then
  -- Newest at the tail: the page is counted back from it.
  local newest = redis.call('LRANGE', which == 4 and completed or failed, -(offset + limit),
    -(offset + 1))
  for n = #newest, 1, -1 do
    ids[#ids + 1] = newest[n]
  end
  local records = sliced('HMGET', fin, ids)
  for n = 1, #ids do
    details[n] = finished_of(records[n])
  end
else
  ids = redis.call('ZRANGE', delayed, offset, offset + limit - 1)
end
local out = {}
for n, id in ipairs(ids) do
  local fields = nil
  if which < 3 or details[n] then
    fields = describe(id, states[which], details[n])
  end
  if fields then
    out[#out + 1] = id
    out[#out + 1] = fields
  end
end
return out
