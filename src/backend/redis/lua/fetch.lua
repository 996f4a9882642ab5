-- Takes up to `max` waiting jobs (about waiting / share of them), highest priority first, and
-- leases them to `token` for `lease_ms` (by Redis's clock): each becomes active, leased for its
-- next run. With `start_all` (async workers start every job at once) their runs are counted
-- here; otherwise each is counted when the worker reports that it started (`started.lua`) or
-- records how it ended. Due delayed jobs are promoted first.
-- Returns {next delayed due in ms or -1, ids, bodies, {n, run, due, error, traceback, ...}}:
-- the bodies as HMGET gives them (false for a job whose record vanished: it is not leased),
-- and for the n-th job when it has a history, its run (else 1) and what it keeps.
-- ARGV: now_ms, now, max, share, token, lease_ms, start_all ('1'/'0')
local now_ms = tonumber(ARGV[1])
promote(now_ms)
if redis.call('HGET', meta, 'paused') == '1' then
  return { first_score(delayed) or -1, {}, {}, {} }
end
local available = waiting_count()
if available == 0 then
  return { first_score(delayed) or -1, {}, {}, {} }
end
local take = math.min(tonumber(ARGV[3]), math.max(1, math.ceil(available / tonumber(ARGV[4]))))
local ids, priorities, from = {}, {}, {}
for _, p in ipairs(PRIORITIES) do
  local popped = redis.call('LPOP', waiting(p), take - #ids)
  if popped then
    if #ids == 0 then
      ids = popped
    else
      for _, id in ipairs(popped) do
        ids[#ids + 1] = id
      end
    end
    priorities[#priorities + 1] = p
    from[#from + 1] = #ids
    if #ids >= take then
      break
    end
  end
end
local bodies = sliced('HMGET', jobs, ids)
-- Most queues hold no job with a history: then nothing is read for it.
local pasts = {}
if redis.call('HLEN', hist) > 0 then
  pasts = sliced('HMGET', hist, ids)
end
local leased_at = server_ms()
local started = ARGV[7] == '1' and ' 1 ' or ' 0 '
local records, extra = {}, {}
local nr, level = 0, 1
-- Each fresh job's record is the same text: its run (1), then what its batch shares.
local fresh = '1' .. started .. '0 ' .. priorities[1] .. ' ' .. leased_at .. ' ' .. ARGV[2]
for n = 1, #ids do
  if n > from[level] then
    level = level + 1
    fresh = '1' .. started .. '0 ' .. priorities[level] .. ' ' .. leased_at .. ' ' .. ARGV[2]
  end
  -- A job whose record vanished (deleted outside the queue) is skipped.
  if bodies[n] then
    nr = nr + 2
    records[nr - 1] = ids[n]
    local past = pasts[n]
    if past then
      past = history_of(past)
      local run = past[1] + 1
      records[nr] = run .. started .. '1 ' .. priorities[level] .. ' ' .. leased_at .. ' '
        .. ARGV[2]
      local id = ids[n]
      extra[#extra + 1] = n
      extra[#extra + 1] = run
      extra[#extra + 1] = past[4] ~= '-' and past[4] or false
      extra[#extra + 1] = redis.call('HGET', errors, id) or false
      extra[#extra + 1] = redis.call('HGET', tracebacks, id) or false
    else
      records[nr] = fresh
    end
  end
end
if nr > 0 then
  sliced('HSET', active_key(ARGV[5]), records)
  redis.call('ZADD', leases, leased_at + tonumber(ARGV[6]), ARGV[5])
end
if available > take then
  signal()
end
return { first_score(delayed) or -1, ids, bodies, extra }
