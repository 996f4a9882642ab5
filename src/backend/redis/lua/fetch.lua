-- Takes up to `max` waiting jobs (about waiting / share of them) and leases them to `token`
-- for `lease_ms` (by Redis's clock): each becomes active, leased for its next run. With
-- `start_all` (async workers start every job at once) their runs are counted here; otherwise
-- each is counted when the worker reports that it started (`started.lua`) or records how it
-- ended.
-- Due delayed jobs are promoted first.
-- Returns {next delayed due in ms or -1, {id, run, max_attempts, body, due, error, traceback, ...}}
-- (`body` false for a job whose record cannot be read; the caller fails it).
-- ARGV: now_ms, now, max, share, token, lease_ms, start_all ('1'/'0')
local now_ms = tonumber(ARGV[1])
promote(now_ms)
local taken = {}
if redis.call('HGET', meta, 'paused') ~= '1' then
  local available = redis.call('ZCARD', waiting)
  if available > 0 then
    local take = math.min(tonumber(ARGV[3]), math.max(1, math.ceil(available / tonumber(ARGV[4]))))
    local popped = redis.call('ZPOPMIN', waiting, take)
    local leased_at = server_ms()
    local start_all = ARGV[7] == '1'
    local ids = {}
    for i = 1, #popped, 2 do
      local id = popped[i]
      local key = job_key(id)
      local job = redis.call('HMGET', key, 'a', 'm', 'b', 'sa', 'e', 'tb')
      -- A job whose record vanished (deleted outside the queue) is skipped.
      if job[3] or job[2] then
        local run = (tonumber(job[1]) or 0) + 1
        if start_all then
          redis.call('HSET', key, 's', 'active', 'a', run, 'n', run, 'st', ARGV[2], 'ls', leased_at)
        else
          redis.call('HSET', key, 's', 'active', 'n', run, 'st', ARGV[2], 'ls', leased_at)
        end
        ids[#ids + 1] = id
        taken[#taken + 1] = id
        taken[#taken + 1] = run
        for field = 2, 6 do
          taken[#taken + 1] = job[field]
        end
      end
    end
    if #ids > 0 then
      sliced('SADD', active_key(ARGV[5]), ids)
      redis.call('ZADD', leases, leased_at + tonumber(ARGV[6]), ARGV[5])
    end
    if available > take then
      signal()
    end
  end
end
return { first_score(delayed) or -1, taken }
