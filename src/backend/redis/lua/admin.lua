-- Queue administration, one operation per call.
-- ARGV[1] = 'declare' (replace '1'/'0', ttl_ms, keep_completed, keep_failed): sets retention;
--           without replace only where none is set yet.
-- ARGV[1] = 'pause' ('1'/'0')
-- ARGV[1] = 'clear': removes up to 1000 waiting and delayed jobs; returns how many.
-- ARGV[1] = 'delete': removes up to 1000 jobs of any state, and the queue's own keys once it
--           has none left; returns how many jobs.
-- ARGV[1] = 'retry' (id): a failed job back to waiting with its attempts reset; 1 if done,
--           0 if the job is not failed, -1 if the queue does not hold it.
-- ARGV[1] = 'wake' (token): a marker on that process's own wake list, for a stop.
local op = ARGV[1]
if op == 'declare' then
  if ARGV[2] == '1' or redis.call('HEXISTS', meta, 'ttl') == 0 then
    redis.call('HSET', meta, 'ttl', ARGV[3], 'kc', ARGV[4], 'kf', ARGV[5])
  end
  return 1
elseif op == 'pause' then
  redis.call('HSET', meta, 'paused', ARGV[2])
  if ARGV[2] == '0' then
    signal()
  end
  return 1
elseif op == 'clear' or op == 'delete' then
  local sets = { waiting, delayed }
  if op == 'delete' then
    sets = { waiting, delayed, active, completed, failed }
  end
  local removed = 0
  for _, set in ipairs(sets) do
    local ids = redis.call('ZRANGE', set, 0, 999 - removed)
    if #ids > 0 then
      zrem_all(set, ids)
      del_jobs(ids)
      removed = removed + #ids
    end
    if removed >= 1000 then
      return removed
    end
  end
  if op == 'delete' then
    redis.call('DEL', meta, wake, base .. 'ticks', base .. 'sweeper')
  end
  return removed
elseif op == 'retry' then
  local key = job_key(ARGV[2])
  local job = redis.call('HMGET', key, 's', 'p')
  if not job[1] then
    return -1
  end
  if job[1] ~= 'failed' then
    return 0
  end
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('ZREM', failed, ARGV[2])
  redis.call('HSET', key, 's', 'waiting', 'a', 0, 'q', seq)
  redis.call('HDEL', key, 'st', 'f', 'sa', 'tk')
  redis.call('ZADD', waiting, rank(tonumber(job[2]), seq), ARGV[2])
  signal()
  return 1
elseif op == 'wake' then
  local own = base .. 'wake:' .. ARGV[2]
  redis.call('RPUSH', own, '1')
  redis.call('PEXPIRE', own, 60000)
  return 1
end
return redis.error_reply('unknown admin operation ' .. tostring(op))
