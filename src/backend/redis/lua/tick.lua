-- Promotes due delayed jobs and expires finished ones; returns the next event in ms, or -1.
-- ARGV: now_ms
local now_ms = tonumber(ARGV[1])
promote(now_ms)
return next_event(expire(now_ms))
