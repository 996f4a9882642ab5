-- Stores new jobs, all in one step. Returns 1 when stored, 2 when stored in a queue this call
-- created (it had been deleted, maybe by another process: it is created again with the
-- settings given, in the same step, and the caller lists its name); 0, storing nothing, when
-- the cron tick given was claimed before (by any process); -2 when one of the ids is already
-- stored here (a job is never overwritten; a push tried again after an unanswered first try
-- finds its own jobs). Jobs forwarded from a spill ('1') are also remembered by id for a week,
-- so that a batch forwarded again (its process died before marking it done) is refused even
-- once retention has dropped the jobs themselves.
-- ARGV: count, schedule_id ('' = none), tick, ttl_ms, keep_completed, keep_failed, settings,
--   forwarded ('1'/'0'), then sections of jobs:
--   'w', priority, k, then k times: id, body        (waiting now: the common case, stored as
--                                                    sent, with no work per job here)
--   's', k, then k times: id, body, priority, due_ms ('' = waiting now, else delayed), due
--                                                   (a due time to keep)
local count = tonumber(ARGV[1])
local forwarded = ARGV[8] == '1'
local FORWARDED_FOR_MS = 7 * 86400000
local created = redis.call('EXISTS', meta) == 0
if ARGV[2] ~= '' and not created then
  local tick = redis.call('HGET', base .. 'ticks', ARGV[2])
  if tick and tonumber(tick) >= tonumber(ARGV[3]) then
    return 0
  end
end
local ids, sections = {}, {}
local n, i = 0, 9
while i <= #ARGV do
  if ARGV[i] == 'w' then
    local k = tonumber(ARGV[i + 2])
    for j = i + 3, i + 2 + 2 * k, 2 do
      n = n + 1
      ids[n] = ARGV[j]
    end
    sections[#sections + 1] = { ARGV[i + 1], i + 3, i + 2 + 2 * k, n - k + 1, n }
    i = i + 3 + 2 * k
  else
    local k = tonumber(ARGV[i + 1])
    for j = i + 2, i + 1 + 5 * k, 5 do
      n = n + 1
      ids[n] = ARGV[j]
    end
    sections[#sections + 1] = { false, i + 2, i + 1 + 5 * k }
    i = i + 2 + 5 * k
  end
end
if #ids ~= count then
  return redis.error_reply('push: ' .. #ids .. ' jobs sent, ' .. count .. ' announced')
end
for _, found in ipairs(sliced('HMGET', jobs, ids)) do
  if found then
    return -2
  end
end
if forwarded then
  for _, id in ipairs(ids) do
    if redis.call('ZSCORE', base .. 'forwarded', id) then
      return -2
    end
  end
  local now_ms = server_ms()
  redis.call('ZREMRANGEBYSCORE', base .. 'forwarded', '-inf', now_ms - FORWARDED_FOR_MS)
  local scored = {}
  for _, id in ipairs(ids) do
    scored[#scored + 1] = now_ms
    scored[#scored + 1] = id
  end
  sliced('ZADD', base .. 'forwarded', scored)
end
if created then
  redis.call('HSET', meta, 'ttl', ARGV[4], 'kc', ARGV[5], 'kf', ARGV[6], 'cfg', ARGV[7], 'v', '2')
end
if ARGV[2] ~= '' then
  redis.call('HSET', base .. 'ticks', ARGV[2], ARGV[3])
end
for _, section in ipairs(sections) do
  local p, from, to = section[1], section[2], section[3]
  if p then
    -- id, body pairs as sent: HSET takes them as they are.
    ranged('HSET', jobs, ARGV, from, to)
    ranged('RPUSH', waiting(p), ids, section[4], section[5])
  else
    local bodies, due, histories = {}, {}, {}
    for j = from, to, 5 do
      local id, priority = ARGV[j], ARGV[j + 2]
      bodies[#bodies + 1] = id
      bodies[#bodies + 1] = ARGV[j + 1]
      if ARGV[j + 3] ~= '' then
        due[#due + 1] = ARGV[j + 3]
        due[#due + 1] = id
      else
        redis.call('RPUSH', waiting(priority), id)
      end
      -- Its priority (for when it is due) and due time are kept in `hist`.
      histories[#histories + 1] = id
      histories[#histories + 1] = history_record(0, 0, priority, ARGV[j + 4] ~= '' and ARGV[j + 4] or nil)
    end
    sliced('HSET', jobs, bodies)
    sliced('HSET', hist, histories)
    if #due > 0 then
      sliced('ZADD', delayed, due)
    end
  end
end
signal()
if created then
  return 2
end
return 1
