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
local ids = {}
local cursor = redis.call('HSCAN', theirs, 0, 'COUNT', 1000)
local all = cursor[2]
for n = 1, #all, 2 do
  if #ids < 1000 then
    ids[#ids + 1] = all[n]
    take_back(all[n], lease_of(all[n + 1]), ARGV[2], ARGV[1], taken)
  end
end
if #ids > 0 then
  sliced('HDEL', theirs, ids)
end
local count = file_taken_back(taken)
local left = redis.call('HLEN', theirs)
if left == 0 then
  redis.call('ZREM', leases, token)
end
return { count, left }
