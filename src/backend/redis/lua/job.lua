-- One job by id, as field/value pairs (see `describe`); nil when the queue does not hold it.
local state, detail = locate(ARGV[1])
if not state then
  return false
end
return describe(ARGV[1], state, detail)
