-- Extends the lease of worker `token` by `lease_ms` (by Redis's clock). Returns 0 if it had
-- none any more: it expired and the sweeper took its jobs back.
--
-- Also takes back the jobs in the worker's active set that it no longer knows it holds (a
-- fetch whose reply never arrived, results that could not be recorded), once they were leased
-- over a lease ago by its own clock: no reply can still be on its way, and nobody else would.
-- ARGV: token, lease_ms, now (the worker's clock, seconds), error, held id, ...
local token, lease_ms = ARGV[1], tonumber(ARGV[2])
if not redis.call('ZSCORE', leases, token) then
  return 0
end
redis.call('ZADD', leases, server_ms() + lease_ms, token)
local held = {}
for n = 5, #ARGV do
  held[ARGV[n]] = true
end
local mine = active_key(token)
local cutoff = tonumber(ARGV[3]) - lease_ms / 1000
local orphans, requeued, dead = {}, {}, {}
for _, id in ipairs(redis.call('SMEMBERS', mine)) do
  if not held[id] then
    local started = tonumber(redis.call('HGET', job_key(id), 'st'))
    if not started or started < cutoff then
      orphans[#orphans + 1] = id
      take_back(id, ARGV[4], ARGV[3], requeued, dead)
    end
  end
end
if #orphans > 0 then
  sliced('SREM', mine, orphans)
  if #requeued > 0 then
    sliced('ZADD', waiting, requeued)
    redis.call('HINCRBY', meta, 'rt', #requeued / 2)
    signal()
  end
  if #dead > 0 then
    sliced('RPUSH', failed, dead)
    redis.call('HINCRBY', meta, 'ft', #dead)
  end
end
return 1
