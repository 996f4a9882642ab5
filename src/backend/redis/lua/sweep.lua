-- Takes back the jobs of a worker process whose lease here expired (it died or lost Redis):
-- runs that never started go back untouched, lost runs are counted (failed when no attempts
-- remain). Called for the tokens the process registry found expired (`workers.lua`). Returns
-- {jobs taken back, jobs that worker still holds here (more than one call's worth)}; the second
-- is -1 when its lease here has not expired yet (the registry must keep the token).
-- ARGV: now (seconds, for the jobs' records), error, token
local token = ARGV[3]
local expiry = tonumber(redis.call('ZSCORE', leases, token))
if not expiry then
  return { 0, 0 }
end
if expiry > server_ms() then
  -- Renewed here after all: not ours to take (yet).
  return { 0, -1 }
end
local theirs = active_key(token)
local taken = new_taken()
-- A random sample of up to 1000 of its jobs (with their lease records): every call takes some,
-- however the hash is laid out (a scan from its start may find only empty buckets).
local sample = redis.call('HRANDFIELD', theirs, 1000, 'WITHVALUES')
local ids = {}
for n = 1, #sample, 2 do
  ids[#ids + 1] = sample[n]
end
-- The removal first: under maxmemory (before Redis 7) a script may write once it freed memory.
if #ids > 0 then
  sliced('HDEL', theirs, ids)
end
for n = 1, #sample, 2 do
  take_back(sample[n], lease_of(sample[n + 1]), ARGV[2], ARGV[1], taken)
end
local count = file_taken_back(taken)
local left = redis.call('HLEN', theirs)
if left == 0 then
  redis.call('ZREM', leases, token)
end
return { count, left }
