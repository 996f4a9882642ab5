-- Stores new jobs, all in one step. Returns 1 when stored, 2 when stored in a queue this call
-- created (it had been deleted, maybe by another process: it is created again with the
-- settings given, in the same step, and the caller lists its name); 0, storing nothing, when
-- the cron tick given was claimed before (by any process); -2 when one of the ids is already
-- stored here (a job is never overwritten; a push tried again after an unanswered first try
-- finds its own jobs). Jobs forwarded from a spill ('1') are also remembered by id for a week,
-- so that a batch forwarded again (its process died before marking it done) is refused even
-- once retention has dropped the jobs themselves.
-- ARGV: count, schedule_id ('' = none), tick, ttl_ms, keep_completed, keep_failed, settings,
--   forwarded ('1'/'0'), then per job: id, delayed ('1'/'0'), due_ms, priority, max_attempts,
--   body, due ('' = none)
local count = tonumber(ARGV[1])
local forwarded = ARGV[8] == '1'
local first = 9
local FORWARDED_FOR_MS = 7 * 86400000
local created = redis.call('EXISTS', meta) == 0
if ARGV[2] ~= '' and not created then
  local last = redis.call('HGET', base .. 'ticks', ARGV[2])
  if last and tonumber(last) >= tonumber(ARGV[3]) then
    return 0
  end
end
for i = first, first - 1 + 7 * count, 7 do
  if redis.call('EXISTS', job_key(ARGV[i])) == 1 then
    return -2
  end
  if forwarded and redis.call('ZSCORE', base .. 'forwarded', ARGV[i]) then
    return -2
  end
end
if forwarded then
  local now_ms = server_ms()
  redis.call('ZREMRANGEBYSCORE', base .. 'forwarded', '-inf', now_ms - FORWARDED_FOR_MS)
  local ids = {}
  for i = first, first - 1 + 7 * count, 7 do
    ids[#ids + 1] = now_ms
    ids[#ids + 1] = ARGV[i]
  end
  sliced('ZADD', base .. 'forwarded', ids)
end
if created then
  redis.call('HSET', meta, 'ttl', ARGV[4], 'kc', ARGV[5], 'kf', ARGV[6], 'cfg', ARGV[7])
end
if ARGV[2] ~= '' then
  redis.call('HSET', base .. 'ticks', ARGV[2], ARGV[3])
end
local seq = redis.call('HINCRBY', meta, 'seq', count) - count
local ranked, due = {}, {}
for i = first, first - 1 + 7 * count, 7 do
  local id = ARGV[i]
  seq = seq + 1
  local job_rank = rank(tonumber(ARGV[i + 3]), seq)
  local state = 'waiting'
  if ARGV[i + 1] == '1' then
    state = 'delayed'
    due[#due + 1] = ARGV[i + 2]
    due[#due + 1] = id
  else
    ranked[#ranked + 1] = job_rank
    ranked[#ranked + 1] = id
  end
  if ARGV[i + 6] == '' then
    redis.call('HSET', job_key(id), 'b', ARGV[i + 5], 's', state, 'k', job_rank, 'm', ARGV[i + 4])
  else
    redis.call('HSET', job_key(id), 'b', ARGV[i + 5], 's', state, 'k', job_rank, 'm', ARGV[i + 4],
      'sa', ARGV[i + 6])
  end
end
sliced('ZADD', waiting, ranked)
sliced('ZADD', delayed, due)
signal()
if created then
  return 2
end
return 1
