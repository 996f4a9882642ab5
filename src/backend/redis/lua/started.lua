-- Notes that leased runs have started (they began after their fetch, later in a worker's
-- batch): each counts as an attempt from now on, should its worker die. Only the lease holder
-- may, for the run it holds.
-- ARGV: token, count, then per run: id, run
local mine, count = active_key(ARGV[1]), tonumber(ARGV[2])
local marked = 0
for n = 0, count - 1 do
  local id, run = ARGV[3 + 2 * n], ARGV[4 + 2 * n]
  local key = job_key(id)
  if redis.call('HGET', key, 'n') == run and redis.call('SISMEMBER', mine, id) == 1 then
    redis.call('HSET', key, 'a', run, 'u', 0)
    marked = marked + 1
  end
end
return marked
