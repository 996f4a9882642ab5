-- Records how runs ended. An ack counts only while its run still holds the lease: the job is
-- in this worker's active hash, leased for the same run; anything else (a lease that expired
-- and was given to another worker) is ignored. The run is counted as an attempt. Returns the
-- queue's next event in ms, or -1.
-- ARGV: now_ms, token, count, then per ack: id, attempt, kind, at, and by kind
--   'c' (completed, no result): nothing more
--   'C' (completed):            result
--   'r' (retry):                due_ms, due, error, has_traceback, traceback
--   'f' (failed):               error, has_traceback, traceback
-- A completion of a job with no history (the common case) is one record written as it is
-- read (the run's active record behind its finish time): no parsing, no formatting.
local now_ms, count = tonumber(ARGV[1]), tonumber(ARGV[3])
local mine = active_key(ARGV[2])
local width = { c = 4, C = 5, r = 9, f = 7 }
local ids, starts = {}, {}
local i = 4
for n = 1, count do
  ids[n] = ARGV[i]
  starts[n] = i
  i = i + width[ARGV[i + 2]]
end
local held = sliced('HMGET', mine, ids)
local settled, finished, done, dead, retry = {}, {}, {}, {}, {}
local ns, nf, nd = 0, 0, 0
local slow = {}
for n = 1, count do
  local record, at = held[n], starts[n]
  if record then
    local run = ARGV[at + 1] .. ' '
    if string.sub(record, 1, #run) == run then
      local id, kind = ids[n], ARGV[at + 2]
      ns = ns + 1
      settled[ns] = id
      -- 48: '0', the job has no history.
      if string.byte(record, #run + 3) == 48 and (kind == 'c' or kind == 'C') then
        nf = nf + 2
        finished[nf - 1] = id
        if kind == 'c' then
          finished[nf] = 'c ' .. ARGV[at + 3] .. ' ' .. record
        else
          finished[nf] = 'c ' .. ARGV[at + 3] .. ' ' .. record .. '\n' .. ARGV[at + 4]
        end
        nd = nd + 1
        done[nd] = id
      else
        slow[#slow + 1] = n
      end
    end
  end
end
-- The rest: retries, failures, and jobs with a history (their due time stays on record).
local errs, tbs, no_tb, forget_past = {}, {}, {}, {}
-- The error at ARGV[i], then has_traceback and traceback.
local function keep_error(id, i)
  errs[#errs + 1] = id
  errs[#errs + 1] = ARGV[i]
  if ARGV[i + 1] == '1' then
    tbs[#tbs + 1] = id
    tbs[#tbs + 1] = ARGV[i + 2]
  else
    no_tb[#no_tb + 1] = id
  end
end
for _, n in ipairs(slow) do
  local id, at = ids[n], starts[n]
  local lease = lease_of(held[n])
  local attempt, kind, when = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local past = lease[3] and history_of(redis.call('HGET', hist, id)) or nil
  local sa = past and past[4] or nil
  if past and kind ~= 'r' then
    forget_past[#forget_past + 1] = id
  end
  if kind == 'c' or kind == 'C' then
    nf = nf + 2
    finished[nf - 1] = id
    finished[nf] = finished_record('c', attempt, when, lease[6], sa, lease[4],
      kind == 'C' and ARGV[at + 4] or nil)
    nd = nd + 1
    done[nd] = id
  elseif kind == 'r' then
    -- A retry waits until due, then queues behind the jobs pushed meanwhile.
    retry[#retry + 1] = ARGV[at + 4]
    retry[#retry + 1] = id
    redis.call('HSET', hist, id, history_record(attempt, 0, lease[4], ARGV[at + 5]))
    keep_error(id, at + 6)
  else
    nf = nf + 2
    finished[nf - 1] = id
    finished[nf] = finished_record('f', attempt, when, lease[6], sa, lease[4])
    dead[#dead + 1] = id
    keep_error(id, at + 4)
  end
end
if ns > 0 then
  sliced('HDEL', mine, settled)
end
if #forget_past > 0 then
  sliced('HDEL', hist, forget_past)
  -- A completed job keeps no error of an earlier attempt; a failed one gets its own below.
  sliced('HDEL', errors, forget_past)
  sliced('HDEL', tracebacks, forget_past)
end
if nf > 0 then
  sliced('HSET', fin, finished)
end
if #errs > 0 then
  sliced('HSET', errors, errs)
end
if #tbs > 0 then
  sliced('HSET', tracebacks, tbs)
end
if #no_tb > 0 then
  sliced('HDEL', tracebacks, no_tb)
end
if nd > 0 then
  sliced('RPUSH', completed, done)
  redis.call('HINCRBY', meta, 'ct', nd)
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
