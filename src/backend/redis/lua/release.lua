-- Hands back leased jobs: waiting again at the front of their priority. ARGV[2] = 'unstarted':
-- runs that never started, whose attempt is not counted; 'abandoned': runs that did start and
-- that this worker gives up on (its shutdown timeout expired), counted, failed when no attempts
-- remain. Only the lease holder may, for the run it holds. Returns the ids handed back.
-- ARGV: token, kind, now, error, count, then per job: id, run
local mine, kind, count = active_key(ARGV[1]), ARGV[2], tonumber(ARGV[5])
local ids = {}
for n = 0, count - 1 do
  ids[#ids + 1] = ARGV[6 + 2 * n]
end
local records = sliced('HMGET', mine, ids)
local taken = new_taken()
local given, held = {}, {}
for n = 0, count - 1 do
  local lease = lease_of(records[n + 1])
  if lease and lease[1] == tonumber(ARGV[7 + 2 * n]) then
    given[#given + 1] = ids[n + 1]
    held[#held + 1] = lease
  end
end
-- The removal first: under maxmemory (before Redis 7) a script may write once it freed memory.
if #given > 0 then
  sliced('HDEL', mine, given)
end
for n, id in ipairs(given) do
  local lease = held[n]
  if kind == 'unstarted' then
    -- As if never fetched: its history is what it was.
    local front = taken.front[lease[4]] or {}
    front[#front + 1] = id
    taken.front[lease[4]] = front
  else
    lease[2] = true
    take_back(id, lease, ARGV[4], ARGV[3], taken)
  end
end
file_taken_back(taken)
return given
