-- ARGV: prefix, worker liveness window ms
-- Returns {queued per priority 0..9, due delayed, delayed not yet due, in flight, dead,
--          live workers, stats as a flat list, used (1|0)}.
local window = tonumber(ARGV[2])
local now = now_ms()
local band = 1099511627776
local per = {}
for prio = 0, 9 do
  local lo = (9 - prio) * band
  per[#per + 1] = redis.call('ZCOUNT', K_QUEUED, lo, '(' .. (lo + band))
end
return {
  per,
  redis.call('ZCOUNT', K_DELAYED, '-inf', now),
  redis.call('ZCOUNT', K_DELAYED, '(' .. now, '+inf'),
  redis.call('ZCARD', K_LEASES),
  redis.call('ZCARD', K_DEAD),
  redis.call('ZCOUNT', K_WORKERS, now - window, '+inf'),
  redis.call('HGETALL', K_STATS),
  queue_used(),
}
