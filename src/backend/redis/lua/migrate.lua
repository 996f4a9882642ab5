-- Converts a queue stored by an older rnode-queue (layout 1: a hash `j:<id>` per job, waiting
-- jobs in a sorted set `waiting` ranked by priority, active jobs in a set per worker) to this
-- layout (2, see common.lua), at most 1000 jobs per call, so that an upgrade keeps every job,
-- in its state, with its attempts, times, result and error. Run by the first process of the
-- new version that declares the queue (all processes of the old version stopped first).
-- Returns {jobs converted, 1 while there is work left (call again) else 0}; with 0 the queue is
-- marked layout 2.
if redis.call('EXISTS', meta) == 0 or redis.call('HGET', meta, 'v') == '2' then
  return { 0, 0 }
end
local SEQ_SPAN = 281474976710656
local budget = 1000
local converted = 0
-- Entries of the delayed set and finished lists walked this call (work, though not converted).
local walked = 0

local function old_key(id)
  return base .. 'j:' .. id
end

-- Reads an old job's hash into a table; nil when it is gone.
local function read_old(id)
  local flat = redis.call('HGETALL', old_key(id))
  if #flat == 0 then
    return nil
  end
  local job = {}
  for n = 1, #flat, 2 do
    job[flat[n]] = flat[n + 1]
  end
  if not job.b then
    return nil
  end
  return job
end

-- Stores the job's body (max attempts now leads its header) and what it carries besides its
-- state; returns its priority and its history record's fields.
local function store_common(id, job)
  local priority = string.match(job.b, '^%S+ (%d+)') or '5'
  redis.call('HSET', jobs, id, (job.m or '1') .. ' ' .. job.b)
  if job.e then
    redis.call('HSET', errors, id, job.e)
  end
  if job.tb then
    redis.call('HSET', tracebacks, id, job.tb)
  end
  return priority
end

local function with_history(id, job, priority, attempts)
  local a, u = tonumber(attempts or job.a or 0) or 0, tonumber(job.u or 0) or 0
  -- An error kept counts too: the run that ends the job clears it.
  if a > 0 or u > 0 or job.sa or job.e or job.tb then
    redis.call('HSET', hist, id, history_record(a, u, priority, job.sa))
    return true
  end
  return false
end

local function finish(id, job, s)
  local priority = store_common(id, job)
  redis.call('HSET', fin, id, finished_record(s, job.a or '0', job.f or '0', job.st, job.sa,
    priority, s == 'c' and job.r or nil))
  if s == 'c' then
    redis.call('HDEL', errors, id)
    redis.call('HDEL', tracebacks, id)
  end
  redis.call('DEL', old_key(id))
end

-- Waiting jobs, in their old order (highest priority first, oldest first).
local old_waiting = base .. 'waiting'
if redis.call('TYPE', old_waiting).ok == 'zset' then
  local ranked = redis.call('ZRANGE', old_waiting, 0, budget - 1, 'WITHSCORES')
  for n = 1, #ranked, 2 do
    local id = ranked[n]
    local job = read_old(id)
    if job then
      store_common(id, job)
      -- The rank holds the priority it waits at.
      local priority = tostring(15 - math.floor(tonumber(ranked[n + 1]) / SEQ_SPAN))
      with_history(id, job, priority)
      redis.call('RPUSH', waiting(priority), id)
      redis.call('DEL', old_key(id))
    end
    redis.call('ZREM', old_waiting, id)
    converted = converted + 1
  end
end

-- Delayed and finished jobs stay in their set or lists; each needs its body and history or
-- finished record. They are walked from a position kept in `meta` (`md`, `mc`, `mf`), 1000 per
-- call: only pushes (which add new-layout jobs, found by their body) change them meanwhile.
local function walk(field, read)
  if converted + walked >= budget then
    return
  end
  local from = tonumber(redis.call('HGET', meta, field) or 0)
  local ids = read(from, from + budget - 1)
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', old_key(id)) == 1 then
      converted = converted + 1
      local job = read_old(id)
      if job and field == 'md' then
        local priority = store_common(id, job)
        redis.call('HSET', hist, id, history_record(tonumber(job.a or 0) or 0,
          tonumber(job.u or 0) or 0, priority, job.sa))
        redis.call('DEL', old_key(id))
      elseif job then
        finish(id, job, field == 'mc' and 'c' or 'f')
      end
    end
  end
  if #ids > 0 then
    redis.call('HSET', meta, field, from + #ids)
    walked = walked + #ids
  end
end
walk('md', function(from, to) return redis.call('ZRANGE', delayed, from, to) end)
walk('mc', function(from, to) return redis.call('LRANGE', completed, from, to) end)
walk('mf', function(from, to) return redis.call('LRANGE', failed, from, to) end)

-- Leased jobs: each worker's set becomes a hash of lease records (the run it holds, whether
-- that run counts, when it was leased and fetched).
if converted < budget then
  for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    local theirs = active_key(token)
    if redis.call('TYPE', theirs).ok == 'set' then
      local records = {}
      for _, id in ipairs(redis.call('SMEMBERS', theirs)) do
        local job = read_old(id)
        if job then
          local priority = store_common(id, job)
          local run = tonumber(job.n or 0) or 0
          local counted = tonumber(job.a or 0) or 0
          if run < 1 then
            run = counted + 1
          end
          local has_hist = with_history(id, job, priority, run - 1)
          records[#records + 1] = id
          records[#records + 1] = lease_record(run, counted >= run, has_hist, priority,
            job.ls or '0', job.st or '-')
          redis.call('DEL', old_key(id))
          converted = converted + 1
        end
      end
      redis.call('DEL', theirs)
      if #records > 0 then
        sliced('HSET', theirs, records)
      end
    end
  end
end

if converted + walked == 0 then
  redis.call('DEL', old_waiting)
  redis.call('HDEL', meta, 'seq', 'md', 'mc', 'mf')
  redis.call('HSET', meta, 'v', '2')
  return { 0, 0 }
end
return { converted, 1 }
