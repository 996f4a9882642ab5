-- Records how runs ended. An ack counts only while its run still holds the lease: the job is
-- in this worker's active set, leased for the same run; anything else (a lease that expired and
-- was given to another worker) is ignored. The run is counted as an attempt (`a`). Returns the
-- queue's next event in ms, or -1.
-- ARGV: now_ms, token, count, then per ack: id, attempt, kind, at, and by kind
--   'c' (completed): has_result, result
--   'r' (retry):     due_ms, due, error, has_traceback, traceback
--   'f' (failed):    error, has_traceback, traceback
local now_ms, count = tonumber(ARGV[1]), tonumber(ARGV[3])
local mine = active_key(ARGV[2])
local width = { c = 6, r = 9, f = 7 }
local done, retry, dead = {}, {}, {}
local i = 4
for _ = 1, count do
  local id, attempt, kind, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'n', 'e', 'tb', 'k')
  if job[1] == attempt and redis.call('SREM', mine, id) == 1 then
    if kind == 'c' then
      if ARGV[i + 4] == '1' then
        redis.call('HSET', key, 's', 'completed', 'a', attempt, 'f', at, 'r', ARGV[i + 5])
      else
        redis.call('HSET', key, 's', 'completed', 'a', attempt, 'f', at)
      end
      if job[2] or job[3] then
        redis.call('HDEL', key, 'e', 'tb')
      end
      done[#done + 1] = id
    elseif kind == 'r' then
      -- A retry queues behind the jobs pushed meanwhile.
      local seq = redis.call('HINCRBY', meta, 'seq', 1)
      redis.call('HSET', key, 's', 'delayed', 'a', attempt, 'sa', ARGV[i + 5], 'e', ARGV[i + 6],
        'k', rerank(tonumber(job[4]), seq))
      if ARGV[i + 7] == '1' then
        redis.call('HSET', key, 'tb', ARGV[i + 8])
      elseif job[3] then
        redis.call('HDEL', key, 'tb')
      end
      retry[#retry + 1] = ARGV[i + 4]
      retry[#retry + 1] = id
    else
      redis.call('HSET', key, 's', 'failed', 'a', attempt, 'f', at, 'e', ARGV[i + 4])
      if ARGV[i + 5] == '1' then
        redis.call('HSET', key, 'tb', ARGV[i + 6])
      elseif job[3] then
        redis.call('HDEL', key, 'tb')
      end
      dead[#dead + 1] = id
    end
  end
  i = i + width[kind]
end
if #done > 0 then
  sliced('RPUSH', completed, done)
  redis.call('HINCRBY', meta, 'ct', #done)
end
if #dead > 0 then
  sliced('RPUSH', failed, dead)
  redis.call('HINCRBY', meta, 'ft', #dead)
end
if #retry > 0 then
  sliced('ZADD', delayed, retry)
  redis.call('HINCRBY', meta, 'rt', #retry / 2)
  -- Idle workers re-read when the next delayed job is due.
  signal()
end
promote(now_ms)
return next_event(expire(now_ms))
