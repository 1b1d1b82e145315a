-- ARGV: prefix, worker liveness window ms
-- Returns {queued per priority 0..9, due delayed, delayed not yet due, in flight, dead,
--          live workers, stats as a flat list, used (1|0), deferred (waiting for the tasks
--          they run after), capped (tasks parked for their tenant's cap on runs at once)}.
-- The stats' 'submitted' is the submit sequence: every submit takes one number of it.
local window = tonumber(ARGV[2])
local now = now_ms()
local per = {}
for prio = 0, 9 do
  local lo = (9 - prio) * PRIORITY_BAND
  per[#per + 1] = redis.call('ZCOUNT', K_QUEUED, lo, '(' .. (lo + PRIORITY_BAND))
end
local stats = {}
local counters = redis.call('HGETALL', K_STATS)
for i = 1, #counters, 2 do
  -- a counter of an earlier version, which counted submits on its own
  if counters[i] ~= 'submitted' then
    stats[#stats + 1] = counters[i]
    stats[#stats + 1] = counters[i + 1]
  end
end
local submitted = redis.call('GET', K_SEQ)
if submitted then
  stats[#stats + 1] = 'submitted'
  stats[#stats + 1] = submitted
end
-- Tasks parked for their tenant's cap on runs at once (common.lua's caps): waiting, but not
-- in `queued` until the tenant has room.
local capped = 0
for _, tenant in ipairs(parked_tenants()) do
  capped = capped + redis.call('ZCARD', parked_key(tenant))
end
return {
  per,
  redis.call('ZCOUNT', K_DELAYED, '-inf', now),
  redis.call('ZCOUNT', K_DELAYED, '(' .. now, '+inf'),
  redis.call('ZCARD', K_LEASES),
  redis.call('ZCARD', K_DEAD),
  redis.call('ZCOUNT', K_WORKERS, now - window, '+inf'),
  stats,
  queue_used(),
  redis.call('ZCARD', K_DEFERRED),
  capped,
}
