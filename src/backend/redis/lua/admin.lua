-- Queue administration, one operation per call.
-- ARGV[1] = 'declare' (replace '1'/'0', ttl_ms, keep_completed, keep_failed, settings): sets the
--           queue's retention and settings (the engine's JSON); without replace only where none
--           are set yet. Returns what is stored: {ttl_ms, keep_completed, keep_failed, settings,
--           1 if the queue was created by this call}.
-- ARGV[1] = 'settings': the same, without writing; {} for a queue that does not exist.
-- ARGV[1] = 'pause' ('1'/'0')
-- ARGV[1] = 'clear': removes up to 1000 waiting and delayed jobs; returns how many.
-- ARGV[1] = 'delete': removes up to 1000 jobs of any state, and the queue's own keys once it
--           has none left; returns how many jobs.
-- ARGV[1] = 'retry' (id): a failed job back to waiting with its attempts reset; 1 if done,
--           0 if the job is not failed, -1 if the queue does not hold it.
-- ARGV[1] = 'remove' (id): one job removed, whatever its state but running; 1 if done, 0 if
--           it runs, -1 if the queue does not hold it.
-- ARGV[1] = 'wake' (token): a marker on that process's own wake list, for a stop.
-- ARGV[1] = 'untick' (schedule id): forgets the last tick pushed for a removed schedule.
-- ARGV[1] = 'unpush' (id, ...): removes jobs just pushed (a push that failed part way).
local op = ARGV[1]
if op == 'declare' then
  local created = redis.call('HEXISTS', meta, 'ttl') == 0
  if created then
    -- The layout (see common.lua; `migrate.lua` converts an older one).
    redis.call('HSET', meta, 'v', '2')
  end
  if ARGV[2] == '1' or created then
    redis.call('HSET', meta, 'ttl', ARGV[3], 'kc', ARGV[4], 'kf', ARGV[5], 'cfg', ARGV[6])
  end
  local stored = redis.call('HMGET', meta, 'ttl', 'kc', 'kf', 'cfg')
  stored[5] = created and 1 or 0
  return stored
elseif op == 'settings' then
  local stored = redis.call('HMGET', meta, 'ttl', 'kc', 'kf', 'cfg')
  if not stored[1] then
    return {}
  end
  return stored
elseif op == 'unpush' then
  -- ARGV[2..]: ids of jobs just pushed, removed again (a push that failed part way).
  local ids, gone = {}, {}
  for n = 2, #ARGV do
    ids[#ids + 1] = ARGV[n]
    gone[ARGV[n]] = true
  end
  if #ids > 0 then
    -- Just pushed: at the back of their lists.
    for _, p in ipairs(PRIORITIES) do
      local list = waiting(p)
      local tail = redis.call('LRANGE', list, -#ids, -1)
      for _, id in ipairs(tail) do
        if gone[id] then
          redis.call('LREM', list, -1, id)
        end
      end
    end
    sliced('ZREM', delayed, ids)
    forget(ids)
  end
  return #ids
elseif op == 'untick' then
  redis.call('HDEL', base .. 'ticks', ARGV[2])
  return 1
elseif op == 'pause' then
  redis.call('HSET', meta, 'paused', ARGV[2])
  if ARGV[2] == '0' then
    signal()
  end
  return 1
elseif op == 'clear' or op == 'delete' then
  local removed = {}
  for _, p in ipairs(PRIORITIES) do
    if #removed < 1000 then
      for _, id in ipairs(redis.call('LPOP', waiting(p), 1000 - #removed) or {}) do
        removed[#removed + 1] = id
      end
    end
  end
  if #removed < 1000 then
    local ids = redis.call('ZRANGE', delayed, 0, 999 - #removed)
    if #ids > 0 then
      sliced('ZREM', delayed, ids)
      for _, id in ipairs(ids) do
        removed[#removed + 1] = id
      end
    end
  end
  if op == 'delete' then
    for _, list in ipairs({ completed, failed }) do
      if #removed < 1000 then
        for _, id in ipairs(redis.call('LPOP', list, 1000 - #removed) or {}) do
          removed[#removed + 1] = id
        end
      end
    end
    for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
      if #removed < 1000 then
        local theirs = active_key(token)
        local ids = redis.call('HKEYS', theirs)
        if #ids > 0 and #ids <= 1000 - #removed then
          redis.call('DEL', theirs)
          for _, id in ipairs(ids) do
            removed[#removed + 1] = id
          end
        elseif #ids > 0 then
          local some = { unpack(ids, 1, 1000 - #removed) }
          sliced('HDEL', theirs, some)
          for _, id in ipairs(some) do
            removed[#removed + 1] = id
          end
        end
      end
    end
  end
  forget(removed)
  if op == 'delete' and #removed < 1000 then
    -- Jobs no list held any more (a record left behind) go with the queue.
    redis.call('DEL', leases, meta, wake, jobs, hist, errors, tracebacks, fin, base .. 'ticks',
      base .. 'forwarded')
  end
  return #removed
elseif op == 'retry' then
  local state, detail = locate(ARGV[2])
  if not state then
    return -1
  end
  if state ~= 'failed' then
    return 0
  end
  redis.call('LREM', failed, -1, ARGV[2])
  redis.call('HDEL', fin, ARGV[2])
  -- Attempts start again; a history entry all the same, so that the run that ends it clears
  -- the error it keeps meanwhile.
  redis.call('HSET', hist, ARGV[2], history_record(0, 0, detail[6]))
  redis.call('RPUSH', waiting(detail[6]), ARGV[2])
  signal()
  return 1
elseif op == 'remove' then
  local id = ARGV[2]
  local state, detail = locate(id)
  if not state then
    return -1
  end
  if state == 'active' then
    return 0
  end
  if state == 'waiting' then
    local _, p = body_header(redis.call('HGET', jobs, id))
    redis.call('LREM', waiting(p), 1, id)
  elseif state == 'delayed' then
    redis.call('ZREM', delayed, id)
  else
    -- From the newest end (-1): a recent job is found at once.
    redis.call('LREM', state == 'completed' and completed or failed, -1, id)
  end
  forget({ id })
  return 1
elseif op == 'wake' then
  local own = base .. 'wake:' .. ARGV[2]
  redis.call('RPUSH', own, '1')
  redis.call('PEXPIRE', own, 60000)
  return 1
end
return redis.error_reply('unknown admin operation ' .. tostring(op))
