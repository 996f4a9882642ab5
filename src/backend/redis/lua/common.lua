-- Shared by every queue script (prepended to each). All keys of one queue carry the same hash
-- tag, so a script touches one Cluster slot. Job keys are derived from `base`, in that slot too.
--
-- Times: `*_ms` values are integer milliseconds (sorted-set scores); the job's own times are
-- stored as the exact decimal strings Rust sends, never formatted by Lua (whose tostring keeps
-- only 14 digits).
local waiting, delayed, active, completed, failed, meta, wake, base =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local function job_key(id)
  return base .. 'j:' .. id
end

-- The waiting score: priority above a FIFO sequence (2^48 apart), lowest first, so ZPOPMIN
-- takes the highest priority, then the oldest job within it.
local function rank(priority, seq)
  return (15 - priority) * 281474976710656 + seq
end

-- Wakes an idle worker blocked on the wake list (in any process). A few markers are enough:
-- a worker that leaves jobs behind passes the signal on.
local function signal()
  if redis.call('LLEN', wake) < 4 then
    redis.call('RPUSH', wake, '1')
  end
end

-- ZADD / ZREM / DEL over a long list, in slices that fit Lua's unpack limit.
local function each_slice(list, width, fn)
  local step = 1000 * width
  for i = 1, #list, step do
    fn(unpack(list, i, math.min(i + step - 1, #list)))
  end
end

local function zadd_all(key, pairs)
  each_slice(pairs, 2, function(...) redis.call('ZADD', key, ...) end)
end

local function zrem_all(key, ids)
  each_slice(ids, 1, function(...) redis.call('ZREM', key, ...) end)
end

local function del_jobs(ids)
  local keys = {}
  for i, id in ipairs(ids) do
    keys[i] = job_key(id)
  end
  each_slice(keys, 1, function(...) redis.call('DEL', ...) end)
end

-- Delayed jobs that are due become waiting, in their FIFO place.
local function promote(now_ms)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms, 'LIMIT', 0, 1000)
  if #due == 0 then
    return 0
  end
  local ranked = {}
  for i, id in ipairs(due) do
    local key = job_key(id)
    local fields = redis.call('HMGET', key, 'p', 'q')
    redis.call('HSET', key, 's', 'waiting')
    ranked[2 * i - 1] = rank(tonumber(fields[1]), tonumber(fields[2]))
    ranked[2 * i] = id
  end
  zrem_all(delayed, due)
  zadd_all(waiting, ranked)
  signal()
  return #due
end

-- Finished jobs past their retention (count, then age) are deleted.
local function trim(set, keep, ttl_ms, now_ms)
  local dropped = {}
  local excess = redis.call('ZCARD', set) - keep
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', set, math.min(excess, 1000))
    for i = 1, #popped, 2 do
      dropped[#dropped + 1] = popped[i]
    end
  end
  local old = redis.call('ZRANGEBYSCORE', set, '-inf', now_ms - ttl_ms, 'LIMIT', 0, 1000)
  if #old > 0 then
    zrem_all(set, old)
    for _, id in ipairs(old) do
      dropped[#dropped + 1] = id
    end
  end
  if #dropped > 0 then
    del_jobs(dropped)
  end
end

local function retention()
  local r = redis.call('HMGET', meta, 'ttl', 'kc', 'kf')
  return tonumber(r[1]) or 86400000, tonumber(r[2]) or 10000, tonumber(r[3]) or 100000
end

local function expire(now_ms)
  local ttl, keep_completed, keep_failed = retention()
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
  for _, set in ipairs({ completed, failed }) do
    local oldest = first_score(set)
    if oldest then
      oldest = oldest + ttl
      if not best or oldest < best then
        best = oldest
      end
    end
  end
  return best or -1
end
