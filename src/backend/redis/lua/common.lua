-- Shared by every queue script (prepended to each). All keys of one queue carry the same hash
-- tag, so a script touches one Cluster slot; the keys derived from `base` are in that slot too.
--
-- The layout keeps a job's entries few and its moves per batch, not per job: a script makes
-- one call per batch and structure (variadic HSET, HMGET, RPUSH, LPOP, HDEL), never one per
-- job, which is what a job costs Redis (see the README, "What a job costs Redis"). A queue has:
--
--   jobs          hash: id -> the packed immutable body (Rust's format: its header begins with
--                 max attempts, then created, priority), written once at push
--   w<p>          list per priority p (15, 10, 5, 0): the waiting ids, oldest first
--   delayed       sorted set: id by due time (ms)
--   active:<tok>  hash per worker process (its lease token): id -> "run started hist p ls st"
--                 (`started` 1 once the run counts as an attempt; `hist` 1 if the job has a
--                 `hist` entry; `ls` when leased, ms by Redis's clock; `st` when fetched)
--   hist          hash: id -> "a u p sa", only for a job with a history (a run counted, a run
--                 taken back unstarted, a due time): attempts counted, times taken back from
--                 dead workers before it was known to start, priority, due time ('-': none)
--   err, tb       hashes: id -> the last error, its traceback (jobs retried or failed)
--   fin           hash: id -> "s f run started hist p ls st[ sa]" then "\n" and the result if
--                 there is one, for a finished job (s 'c' completed or 'f' failed; see
--                 `finished_of`)
--   completed, failed  lists of finished ids, oldest first: retention trims them in bulk
--   leases        sorted set: token by lease expiry; meta, wake, ticks, forwarded
--
-- A fresh job so costs an entry in `jobs` and one in a waiting list; its fetch an entry in its
-- worker's active hash; its completion a `fin` entry and one in `completed`, and retention
-- drops them. Times are the exact decimal strings Rust sends, never formatted by Lua (whose
-- tostring keeps only 14 digits); `*_ms` values are integer milliseconds.
--
-- Out of memory (maxmemory with noeviction): on Redis 7 every script but `push` runs with the
-- `allow-oom` flag, so that workers keep draining (which frees memory) and pause and resume
-- work; on older servers a script may write freely once a first write removed something, which
-- is why moves begin with their removal.
local jobs, delayed, leases, completed, failed, meta, wake, base =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local hist, errors, tracebacks, fin = base .. 'hist', base .. 'err', base .. 'tb', base .. 'fin'

-- Priorities, highest first: fetches take from the first list that has jobs.
local PRIORITIES = { '15', '10', '5', '0' }

local function waiting(p)
  return base .. 'w' .. p
end

-- The jobs a worker process (its token) has leased.
local function active_key(token)
  return base .. 'active:' .. token
end

-- Wakes an idle worker blocked on the wake list (in any process). A few markers are enough:
-- a worker that leaves jobs behind passes the signal on.
local function signal()
  if redis.call('LLEN', wake) < 4 then
    redis.call('RPUSH', wake, '1')
  end
end

-- A command over the items `from`..`to` of a list, in slices that fit Lua's unpack limit; the
-- replies of a command that answers per argument (HMGET) are joined.
local function ranged(command, key, list, from, to)
  if to < from then
    return {}
  end
  if to - from < 2000 then
    return redis.call(command, key, unpack(list, from, to))
  end
  local out = nil
  for i = from, to, 2000 do
    local reply = redis.call(command, key, unpack(list, i, math.min(i + 1999, to)))
    if type(reply) == 'table' then
      if out == nil then
        out = reply
      else
        for _, v in ipairs(reply) do
          out[#out + 1] = v
        end
      end
    else
      out = (out or 0) + reply
    end
  end
  return out
end

-- The same over a whole list.
local function sliced(command, key, list)
  return ranged(command, key, list, 1, #list)
end

-- Records are parsed with one pattern each (one C call: this runs for every job of a batch).

-- A job's history {a, u, p, sa}; `nil` when it has none.
local function history_of(record)
  if not record then
    return nil
  end
  local a, u, p, sa = string.match(record, '^(%d+) (%d+) (%d+) (%S+)')
  return { tonumber(a), tonumber(u), p, sa }
end

local function history_record(a, u, p, sa)
  return a .. ' ' .. u .. ' ' .. p .. ' ' .. (sa or '-')
end

-- The active record of a leased run {run, started, hist, p, ls, st}.
local function lease_of(record)
  if not record then
    return nil
  end
  local run, started, has_hist, p, ls, st =
    string.match(record, '^(%d+) (%d) (%d) (%d+) (%d+) (%S+)')
  return { tonumber(run), started == '1', has_hist == '1', p, tonumber(ls), st }
end

local function lease_record(run, started, has_hist, p, leased_ms, st)
  return run .. (started and ' 1 ' or ' 0 ') .. (has_hist and '1 ' or '0 ') .. p .. ' '
    .. leased_ms .. ' ' .. st
end

-- The finished record {s, a, f, st, sa, p, result}. Its text is "s f " then the run's active
-- record (so that a completion writes it without parsing: "run started hist p ls st"), then
-- " sa" for a job with a due time, then "\n" and the result if there is one.
local function finished_of(record)
  if not record then
    return nil
  end
  local s, f, a, p, st, sa, rest =
    string.match(record, '^(%a) (%S+) (%d+) %d %d (%d+) %d+ (%S+)([^\n]*)(.*)$')
  return { s, a, f, st, sa ~= '' and string.sub(sa, 2) or nil, p,
    rest ~= '' and string.sub(rest, 2) or nil }
end

local function finished_record(s, a, f, st, sa, p, result)
  local record = s .. ' ' .. f .. ' ' .. a .. ' 1 0 ' .. p .. ' 0 ' .. (st or '-')
  if sa and sa ~= '-' then
    record = record .. ' ' .. sa
  end
  if result then
    return record .. '\n' .. result
  end
  return record
end

-- Max attempts and priority, from a body's header.
local function body_header(body)
  local m, p = string.match(body, '^(%d+) %S+ (%d+)')
  return tonumber(m), p
end

-- Every entry a job may have besides its body, dropped (it left the queue).
local function forget(ids)
  if #ids > 0 then
    for _, key in ipairs({ jobs, hist, errors, tracebacks, fin }) do
      sliced('HDEL', key, ids)
    end
  end
end

-- Delayed jobs that are due become waiting, at the back of their priority (as if pushed now).
local function promote(now_ms)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms, 'LIMIT', 0, 1000)
  if #due == 0 then
    return 0
  end
  sliced('ZREM', delayed, due)
  local records = sliced('HMGET', hist, due)
  local by_priority = {}
  local moved = 0
  for n, id in ipairs(due) do
    local past = history_of(records[n])
    -- A job whose record vanished (deleted outside the queue) is only dropped from the set.
    if past then
      local list = by_priority[past[3]] or {}
      list[#list + 1] = id
      by_priority[past[3]] = list
      moved = moved + 1
    end
  end
  for p, ids in pairs(by_priority) do
    sliced('RPUSH', waiting(p), ids)
  end
  if moved > 0 then
    signal()
  end
  return moved
end

-- How many jobs wait, all priorities.
local function waiting_count()
  local total = 0
  for _, p in ipairs(PRIORITIES) do
    total = total + redis.call('LLEN', waiting(p))
  end
  return total
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
  local record = redis.call('HGET', fin, head)
  local finished = record and tonumber(string.match(record, '^%a (%S+)'))
  return finished and finished * 1000 or 0
end

-- Finished jobs (a list, oldest first) past their retention count or age are deleted.
-- Returns when the oldest one left finished (ms), or nil when none is left.
local function trim(list, keep, ttl_ms, now_ms)
  local dropped = {}
  local excess = redis.call('LLEN', list) - keep
  if excess > 0 then
    dropped = redis.call('LPOP', list, math.min(excess, 1000))
  end
  local finished = nil
  for _ = 1, 1000 do
    finished = head_finished_ms(list)
    if not finished or finished > now_ms - ttl_ms then
      break
    end
    dropped[#dropped + 1] = redis.call('LPOP', list)
  end
  if #dropped > 0 then
    sliced('HDEL', jobs, dropped)
    sliced('HDEL', fin, dropped)
    if list == failed then
      sliced('HDEL', errors, dropped)
      sliced('HDEL', tracebacks, dropped)
    end
  end
  return finished
end

-- Trims both lists; returns the ttl and when the oldest job left in each finished (ms or
-- nil), or nil when the queue's record is gone.
local function expire(now_ms)
  local ttl, keep_completed, keep_failed = retention()
  if not ttl then
    return nil
  end
  local oldest_completed = trim(completed, keep_completed, ttl, now_ms)
  local oldest_failed = trim(failed, keep_failed, ttl, now_ms)
  return { ttl, oldest_completed, oldest_failed }
end

local function first_score(set)
  local r = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if #r == 0 then
    return nil
  end
  return tonumber(r[2])
end

-- When the queue next has something to do (a delayed job due, a finished job to expire), in
-- milliseconds; -1: nothing. `expired` is what `expire` returned.
local function next_event(expired)
  local best = first_score(delayed)
  if expired then
    for n = 2, 3 do
      local oldest = expired[n]
      if oldest then
        oldest = oldest + expired[1]
        if not best or oldest < best then
          best = oldest
        end
      end
    end
  end
  return best or -1
end

-- A job taken back this many times from workers that died before it was known to start is
-- counted then all the same: one that kills its worker at once cannot run for ever uncounted.
local UNSTARTED_LIMIT = 3

local function new_taken()
  return { front = {}, requeued = 0, dead = {}, failed_at = {} }
end

-- Takes a job back from a worker that lost it (it died, or lost Redis), given its active
-- record (already removed from the worker's hash): a run that never started goes back
-- untouched, at the front of its priority; a lost run is counted and the job waits again (at
-- the front), or fails when no attempts remain. `taken` gathers them for `file_taken_back`.
local function take_back(id, lease, error, now, taken)
  local run, started, has_hist, p = lease[1], lease[2], lease[3], lease[4]
  local body = redis.call('HGET', jobs, id)
  if not body then
    return
  end
  local max_attempts = body_header(body)
  local past = has_hist and history_of(redis.call('HGET', hist, id)) or nil
  local unstarted = past and past[2] or 0
  local sa = past and past[4] or '-'
  local counted = run - 1
  if started then
    counted = run
  else
    unstarted = unstarted + 1
    if unstarted < UNSTARTED_LIMIT then
      redis.call('HSET', hist, id, history_record(counted, unstarted, p, sa))
      local front = taken.front[p] or {}
      front[#front + 1] = id
      taken.front[p] = front
      return
    end
    counted = run
  end
  if counted < max_attempts then
    redis.call('HSET', hist, id, history_record(counted, 0, p, sa))
    redis.call('HSET', errors, id, error)
    local front = taken.front[p] or {}
    front[#front + 1] = id
    taken.front[p] = front
    taken.requeued = taken.requeued + 1
  else
    redis.call('HSET', fin, id, finished_record('f', counted, now, lease[6], sa, p))
    redis.call('HSET', errors, id, error)
    redis.call('HDEL', tracebacks, id)
    redis.call('HDEL', hist, id)
    taken.dead[#taken.dead + 1] = id
  end
end

-- Files the jobs `take_back` sorted: waiting again at the front of their priority (in the
-- order taken), or failed. Returns how many.
local function file_taken_back(taken)
  local count = 0
  for p, ids in pairs(taken.front) do
    -- LPUSH puts the last first: reversed, the first taken runs first.
    local reversed = {}
    for n = #ids, 1, -1 do
      reversed[#reversed + 1] = ids[n]
    end
    sliced('LPUSH', waiting(p), reversed)
    count = count + #ids
  end
  if taken.requeued > 0 then
    redis.call('HINCRBY', meta, 'rt', taken.requeued)
  end
  if count > 0 then
    signal()
  end
  if #taken.dead > 0 then
    sliced('RPUSH', failed, taken.dead)
    redis.call('HINCRBY', meta, 'ft', #taken.dead)
  end
  return count + #taken.dead
end

-- Where a job is: 'waiting', 'delayed', 'active' (with its lease record and token),
-- 'completed' / 'failed' (with its finished record); nil when the queue does not hold it.
local function locate(id)
  if redis.call('HEXISTS', jobs, id) == 0 then
    return nil
  end
  local record = redis.call('HGET', fin, id)
  if record then
    local done = finished_of(record)
    return done[1] == 'c' and 'completed' or 'failed', done
  end
  if redis.call('ZSCORE', delayed, id) then
    return 'delayed'
  end
  for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    local lease = redis.call('HGET', active_key(token), id)
    if lease then
      return 'active', lease_of(lease), token
    end
  end
  return 'waiting'
end

-- A job as field/value pairs (the shape Rust reads, as HGETALL would give), or nil.
local function describe(id, state, detail)
  local body = redis.call('HGET', jobs, id)
  if not body then
    return nil
  end
  local out = { 'b', body, 's', state }
  local past = history_of(redis.call('HGET', hist, id))
  local function add(field, value)
    if value and value ~= '-' then
      out[#out + 1] = field
      out[#out + 1] = value
    end
  end
  if state == 'completed' or state == 'failed' then
    add('a', detail[2])
    add('f', detail[3])
    add('st', detail[4])
    add('sa', detail[5])
    add('r', detail[7])
  elseif state == 'active' then
    add('a', tostring(detail[2] and detail[1] or detail[1] - 1))
    add('n', tostring(detail[1]))
    add('st', detail[6])
    add('sa', past and past[4])
  elseif past then
    add('a', tostring(past[1]))
    add('u', tostring(past[2]))
    add('sa', past[4])
  end
  if state ~= 'completed' then
    add('e', redis.call('HGET', errors, id))
    add('tb', redis.call('HGET', tracebacks, id))
  end
  return out
end
