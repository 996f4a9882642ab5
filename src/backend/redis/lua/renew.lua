-- Extends the leases `token` still holds to `lease_ms`; returns the ids it no longer holds.
-- ARGV: token, lease_ms, id, ...
local token, lease_ms = ARGV[1], ARGV[2]
local lost = {}
for n = 3, #ARGV do
  local id = ARGV[n]
  if redis.call('HGET', job_key(id), 'tk') == token then
    redis.call('ZADD', active, 'XX', lease_ms, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
