-- Notes that leased runs have started (they began after their fetch, later in a worker's
-- batch): each counts as an attempt from now on, should its worker die. Only the lease holder
-- may, for the run it holds.
-- ARGV: token, count, then per run: id, run
local mine, count = active_key(ARGV[1]), tonumber(ARGV[2])
local ids = {}
for n = 0, count - 1 do
  ids[#ids + 1] = ARGV[3 + 2 * n]
end
local records = sliced('HMGET', mine, ids)
local marked = {}
for n = 0, count - 1 do
  local lease = lease_of(records[n + 1])
  if lease and lease[1] == tonumber(ARGV[4 + 2 * n]) and not lease[2] then
    marked[#marked + 1] = ids[n + 1]
    marked[#marked + 1] = lease_record(lease[1], true, lease[3], lease[4], lease[5], lease[6])
  end
end
if #marked > 0 then
  sliced('HSET', mine, marked)
end
return #marked / 2
