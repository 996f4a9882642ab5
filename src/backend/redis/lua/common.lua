-- Shared by every queue script (prepended to each). All keys of one queue carry the same hash
-- tag, so a script touches one Cluster slot. Job keys and the per-worker active sets are derived
-- from `base`, in that slot too.
--
-- A job is a hash `j:<id>`: `b` its packed immutable body (Rust's format), `s` state, `k` its
-- waiting rank, `m` max attempts, `a` attempts counted (runs known to have started), `n` the
-- run its current lease is for (above `a` while that run has not started), `u` how many times
-- it was taken back from dead workers before it was known to start, `st` / `f` / `sa`
-- started, finished and due times, `ls` when it was leased (Redis's clock), `r` result, `e`
-- error, `tb` traceback. Times are the exact decimal strings Rust sends, never formatted by Lua
-- (whose tostring keeps only 14 digits); `*_ms` values are integer milliseconds for sorted-set
-- scores.
--
-- Out of memory (maxmemory with noeviction): on Redis 7 every script but `push` runs with the
-- `allow-oom` flag, so that workers keep draining (which frees memory) and pause and resume
-- work; on older servers a script may write freely once a first write removed something, which
-- is why moves begin with their removal.
local waiting, delayed, leases, completed, failed, meta, wake, base =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- The rank is priority above a FIFO sequence, 2^48 apart, lowest first: ZPOPMIN takes the
-- highest priority, then the oldest job within it.
local SEQ_SPAN = 281474976710656

local function job_key(id)
  return base .. 'j:' .. id
end

-- The jobs a worker process (its token) has leased.
local function active_key(token)
  return base .. 'active:' .. token
end

local function rank(priority, seq)
  return (15 - priority) * SEQ_SPAN + seq
end

-- The same priority, a new place at the back.
local function rerank(old_rank, seq)
  return math.floor(old_rank / SEQ_SPAN) * SEQ_SPAN + seq
end

-- Wakes an idle worker blocked on the wake list (in any process). A few markers are enough:
-- a worker that leaves jobs behind passes the signal on.
local function signal()
  if redis.call('LLEN', wake) < 4 then
    redis.call('RPUSH', wake, '1')
  end
end

-- A command over a long list of arguments, in slices that fit Lua's unpack limit.
local function sliced(command, key, list)
  for i = 1, #list, 2000 do
    redis.call(command, key, unpack(list, i, math.min(i + 1999, #list)))
  end
end

local function del_jobs(ids)
  for i = 1, #ids, 1000 do
    local keys = {}
    for j = i, math.min(i + 999, #ids) do
      keys[#keys + 1] = job_key(ids[j])
    end
    redis.call('DEL', unpack(keys))
  end
end

-- Delayed jobs that are due become waiting, at the back of their priority (as if pushed now).
local function promote(now_ms)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms, 'LIMIT', 0, 1000)
  if #due == 0 then
    return 0
  end
  sliced('ZREM', delayed, due)
  local seq = redis.call('HINCRBY', meta, 'seq', #due) - #due
  local ranked = {}
  for _, id in ipairs(due) do
    local key = job_key(id)
    local old_rank = redis.call('HGET', key, 'k')
    -- A job whose record vanished (deleted outside the queue) is only dropped from the set.
    if old_rank then
      seq = seq + 1
      local job_rank = rerank(tonumber(old_rank), seq)
      redis.call('HSET', key, 's', 'waiting', 'k', job_rank)
      ranked[#ranked + 1] = job_rank
      ranked[#ranked + 1] = id
    end
  end
  if #ranked > 0 then
    sliced('ZADD', waiting, ranked)
    signal()
  end
  return #ranked / 2
end

-- Redis's clock in ms: leases are judged by one clock whichever host holds them.
local function server_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The queue's retention (ttl in ms, counts), as the engine declared it; nil when the queue's
-- record is gone (deleted meanwhile): then nothing is trimmed until a push declares it again.
local function retention()
  local r = redis.call('HMGET', meta, 'ttl', 'kc', 'kf')
  if not (r[1] and r[2] and r[3]) then
    return nil
  end
  return tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
end

-- When the oldest finished job of a list finished, in ms.
local function head_finished_ms(list)
  local head = redis.call('LINDEX', list, 0)
  if not head then
    return nil
  end
  local finished = tonumber(redis.call('HGET', job_key(head), 'f'))
  return finished and finished * 1000 or 0
end

-- Finished jobs (a list, oldest first) past their retention count or age are deleted.
local function trim(list, keep, ttl_ms, now_ms)
  local dropped = {}
  local excess = redis.call('LLEN', list) - keep
  if excess > 0 then
    dropped = redis.call('LPOP', list, math.min(excess, 1000))
  end
  for _ = 1, 1000 do
    local finished = head_finished_ms(list)
    if not finished or finished > now_ms - ttl_ms then
      break
    end
    dropped[#dropped + 1] = redis.call('LPOP', list)
  end
  if #dropped > 0 then
    del_jobs(dropped)
  end
end

local function expire(now_ms)
  local ttl, keep_completed, keep_failed = retention()
  if not ttl then
    return nil
  end
  trim(completed, keep_completed, ttl, now_ms)
  trim(failed, keep_failed, ttl, now_ms)
  return ttl
end

local function first_score(set)
  local r = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if #r == 0 then
    return nil
  end
  return tonumber(r[2])
end

-- When the queue next has something to do (a delayed job due, a finished job to expire), in
-- milliseconds; -1: nothing.
local function next_event(ttl)
  local best = first_score(delayed)
  for _, list in ipairs(ttl and { completed, failed } or {}) do
    local oldest = head_finished_ms(list)
    if oldest then
      oldest = oldest + ttl
      if not best or oldest < best then
        best = oldest
      end
    end
  end
  return best or -1
end

-- A job taken back this many times from workers that died before it was known to start is
-- counted then all the same: one that kills its worker at once cannot run for ever uncounted.
local UNSTARTED_LIMIT = 3

-- Takes a job back from a worker that lost it (it died, or lost Redis): a run that never
-- started goes back untouched, in its old place; a lost run is counted and the job waits again,
-- or fails when no attempts remain. `taken` gathers the jobs for `file_taken_back`.
local function take_back(id, error, now, taken)
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'a', 'm', 'k', 'n', 'u')
  if not (job[2] and job[3]) then
    return
  end
  local counted, run = tonumber(job[1]) or 0, tonumber(job[4]) or 0
  if run > counted then
    local unstarted = (tonumber(job[5]) or 0) + 1
    if unstarted < UNSTARTED_LIMIT then
      redis.call('HSET', key, 's', 'waiting', 'n', counted, 'u', unstarted)
      taken.untouched[#taken.untouched + 1] = job[3]
      taken.untouched[#taken.untouched + 1] = id
      return
    end
    counted = run
    redis.call('HSET', key, 'a', run, 'u', 0)
  end
  if counted < tonumber(job[2]) then
    redis.call('HSET', key, 's', 'waiting', 'e', error)
    taken.requeued[#taken.requeued + 1] = job[3]
    taken.requeued[#taken.requeued + 1] = id
  else
    redis.call('HSET', key, 's', 'failed', 'f', now, 'e', error)
    taken.dead[#taken.dead + 1] = id
  end
end

local function new_taken()
  return { untouched = {}, requeued = {}, dead = {} }
end

-- Files the jobs `take_back` sorted: waiting again (a lost run counted as a retry), or failed.
-- Returns how many.
local function file_taken_back(taken)
  local untouched, requeued, dead = taken.untouched, taken.requeued, taken.dead
  if #untouched > 0 then
    sliced('ZADD', waiting, untouched)
  end
  if #requeued > 0 then
    sliced('ZADD', waiting, requeued)
    redis.call('HINCRBY', meta, 'rt', #requeued / 2)
  end
  if #untouched + #requeued > 0 then
    signal()
  end
  if #dead > 0 then
    sliced('RPUSH', failed, dead)
    redis.call('HINCRBY', meta, 'ft', #dead)
  end
  return (#untouched + #requeued) / 2 + #dead
end
