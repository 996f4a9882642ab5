-- Records how runs ended. An ack counts only while its run still holds the lease: the job is
-- active, on the same attempt, with the same worker token; anything else (a lease that expired
-- and was given to another worker) is ignored. Returns the queue's next event in ms, or -1.
-- ARGV: now_ms, token, count, then per ack: id, attempt, kind, at, at_ms, and by kind
--   'c' (completed): has_result, result
--   'r' (retry):     due_ms, due, error, has_traceback, traceback
--   'f' (failed):    error, has_traceback, traceback
local now_ms, token, count = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local width = { c = 7, r = 10, f = 8 }
local settled, done, retry, dead = {}, {}, {}, {}
local i = 4
for _ = 1, count do
  local id, attempt, kind, at, at_ms = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local key = job_key(id)
  local held = redis.call('HMGET', key, 's', 'a', 'tk')
  if held[1] == 'active' and held[2] == attempt and held[3] == token then
    settled[#settled + 1] = id
    if kind == 'c' then
      if ARGV[i + 5] == '1' then
        redis.call('HSET', key, 's', 'completed', 'f', at, 'r', ARGV[i + 6])
        redis.call('HDEL', key, 'tk', 'e', 'tb')
      else
        redis.call('HSET', key, 's', 'completed', 'f', at)
        redis.call('HDEL', key, 'tk', 'e', 'tb', 'r')
      end
      done[#done + 1] = at_ms
      done[#done + 1] = id
    elseif kind == 'r' then
      -- A retry queues behind the jobs pushed meanwhile.
      local seq = redis.call('HINCRBY', meta, 'seq', 1)
      redis.call('HSET', key, 's', 'delayed', 'sa', ARGV[i + 6], 'e', ARGV[i + 7], 'q', seq)
      if ARGV[i + 8] == '1' then
        redis.call('HSET', key, 'tb', ARGV[i + 9])
        redis.call('HDEL', key, 'tk')
      else
        redis.call('HDEL', key, 'tk', 'tb')
      end
      retry[#retry + 1] = ARGV[i + 5]
      retry[#retry + 1] = id
    else
      redis.call('HSET', key, 's', 'failed', 'f', at, 'e', ARGV[i + 5])
      if ARGV[i + 6] == '1' then
        redis.call('HSET', key, 'tb', ARGV[i + 7])
        redis.call('HDEL', key, 'tk')
      else
        redis.call('HDEL', key, 'tk', 'tb')
      end
      dead[#dead + 1] = at_ms
      dead[#dead + 1] = id
    end
  end
  i = i + width[kind]
end
if #settled > 0 then
  zrem_all(active, settled)
  zadd_all(completed, done)
  zadd_all(failed, dead)
  zadd_all(delayed, retry)
  if #done > 0 then
    redis.call('HINCRBY', meta, 'ct', #done / 2)
  end
  if #dead > 0 then
    redis.call('HINCRBY', meta, 'ft', #dead / 2)
  end
  if #retry > 0 then
    redis.call('HINCRBY', meta, 'rt', #retry / 2)
    -- Idle workers re-read when the next delayed job is due.
    signal()
  end
end
promote(now_ms)
return next_event(expire(now_ms))
