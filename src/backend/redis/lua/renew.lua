-- Extends the lease of worker `token` to `lease_ms`. Returns 0 if it had none any more (it
-- expired and the sweeper took its jobs back).
-- ARGV: token, lease_ms
if not redis.call('ZSCORE', leases, ARGV[1]) then
  return 0
end
redis.call('ZADD', leases, ARGV[2], ARGV[1])
return 1
