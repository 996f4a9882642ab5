-- Hands back leased jobs: waiting again in their old place. ARGV[2] = 'unstarted': runs that
-- never started, whose attempt is not counted; 'abandoned': runs that did start and that this
-- worker gives up on (its shutdown timeout expired), counted, failed when no attempts remain.
-- Only the lease holder may, for the run it holds. Returns the ids handed back.
-- ARGV: token, kind, now, error, count, then per job: id, run
local mine, kind, count = active_key(ARGV[1]), ARGV[2], tonumber(ARGV[5])
local taken = new_taken()
local given = {}
for n = 0, count - 1 do
  local id, run = ARGV[6 + 2 * n], ARGV[7 + 2 * n]
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'n', 'k')
  if job[1] == run and redis.call('SREM', mine, id) == 1 then
    given[#given + 1] = id
    if kind == 'unstarted' then
      redis.call('HSET', key, 's', 'waiting', 'a', tonumber(run) - 1, 'n', tonumber(run) - 1)
      taken.untouched[#taken.untouched + 1] = job[2]
      taken.untouched[#taken.untouched + 1] = id
    else
      redis.call('HSET', key, 'a', run)
      take_back(id, ARGV[4], ARGV[3], taken)
    end
  end
end
file_taken_back(taken)
return given
