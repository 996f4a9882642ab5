-- {waiting, delayed, active, completed total, failed total, retried total, paused}
local active = 0
for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  active = active + redis.call('HLEN', active_key(token))
end
local totals = redis.call('HMGET', meta, 'ct', 'ft', 'rt', 'paused')
return {
  waiting_count(), redis.call('ZCARD', delayed), active,
  tonumber(totals[1]) or 0, tonumber(totals[2]) or 0, tonumber(totals[3]) or 0,
  totals[4] == '1' and 1 or 0,
}
