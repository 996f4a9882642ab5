-- Stores new jobs, all in one step. With a schedule id, first claims that cron tick: a tick
-- already claimed (by any process) pushes nothing and returns 0.
-- ARGV: now_ms, count, schedule_id ('' = none), tick,
--   then per job: id, delayed ('1'/'0'), due_ms, priority, field_count, field, value, ...
local count = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  local ticks = base .. 'ticks'
  local last = redis.call('HGET', ticks, ARGV[3])
  if last and tonumber(last) >= tonumber(ARGV[4]) then
    return 0
  end
  redis.call('HSET', ticks, ARGV[3], ARGV[4])
end
local seq = redis.call('HINCRBY', meta, 'seq', count) - count
local ranked, due = {}, {}
local i = 5
for _ = 1, count do
  local id, is_delayed, field_count = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 4])
  seq = seq + 1
  local state = 'waiting'
  if is_delayed then
    state = 'delayed'
    due[#due + 1] = ARGV[i + 2]
    due[#due + 1] = id
  else
    ranked[#ranked + 1] = rank(tonumber(ARGV[i + 3]), seq)
    ranked[#ranked + 1] = id
  end
  redis.call('HSET', job_key(id), 's', state, 'q', seq, unpack(ARGV, i + 5, i + 4 + 2 * field_count))
  i = i + 5 + 2 * field_count
end
zadd_all(waiting, ranked)
zadd_all(delayed, due)
signal()
return 1
