-- Extends the lease of worker `token` by `lease_ms` (by Redis's clock). Returns -1 if it had
-- none any more (it expired and the sweeper took its jobs back), else how many jobs it still
-- holds here.
--
-- Also takes back the jobs in the worker's active hash that it no longer knows it holds (a
-- fetch whose reply never arrived, results that could not be recorded), once they were leased
-- (by Redis's clock) longer ago than a lease and than any command may take (`settled_ms`): no
-- reply can still be on its way then.
-- ARGV: token, lease_ms, now (seconds, for the jobs' records), error, settled_ms, held id, ...
local token, lease_ms = ARGV[1], tonumber(ARGV[2])
if not redis.call('ZSCORE', leases, token) then
  return -1
end
local now_ms = server_ms()
redis.call('ZADD', leases, now_ms + lease_ms, token)
local held = {}
for n = 6, #ARGV do
  held[ARGV[n]] = true
end
local mine = active_key(token)
local cutoff = now_ms - math.max(lease_ms, tonumber(ARGV[5]))
local orphans, leased, taken = {}, {}, new_taken()
local all = redis.call('HGETALL', mine)
for n = 1, #all, 2 do
  local id = all[n]
  if not held[id] then
    local lease = lease_of(all[n + 1])
    if lease[5] < cutoff then
      orphans[#orphans + 1] = id
      leased[#leased + 1] = lease
    end
  end
end
if #orphans > 0 then
  -- The removal first: under maxmemory (before Redis 7) a script may write once it freed memory.
  sliced('HDEL', mine, orphans)
  for n, id in ipairs(orphans) do
    take_back(id, leased[n], ARGV[4], ARGV[3], taken)
  end
  file_taken_back(taken)
end
return redis.call('HLEN', mine)
