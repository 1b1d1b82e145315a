-- ARGV: prefix, worker liveness window ms
-- Returns {queued per priority 0..9, due delayed, delayed not yet due, in flight, dead,
--          live workers, stats as a flat list, used (1|0), deferred (waiting for the tasks
--          they run after), held (queued tasks whose tenant is at its cap on runs at once)}.
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
-- Held: among the first HELD_LOOK queued tasks, in the order claims take them, those whose
-- tenant has no room left under its cap (common.lua's caps) once the ones ahead took theirs;
-- for a longer queue, that share of its length (an estimate). Read only: a run counts while
-- its task holds a lease.
local HELD_LOOK = 1000
local held = 0
if caps_on() then
  local head = redis.call('ZRANGE', K_QUEUED, 0, HELD_LOOK - 1)
  local room = {}
  for _, id in ipairs(head) do
    local tenant = redis.call('HGET', task_key(id), 'tenant')
    if tenant then
      if room[tenant] == nil then
        local cap = tenant_cap(tenant)
        room[tenant] = false
        if cap then
          local runs = 0
          for _, run in ipairs(redis.call('SMEMBERS', runs_key(tenant))) do
            if redis.call('ZSCORE', K_LEASES, run) then runs = runs + 1 end
          end
          room[tenant] = cap - runs
        end
      end
      if room[tenant] then
        if room[tenant] > 0 then room[tenant] = room[tenant] - 1 else held = held + 1 end
      end
    end
  end
  local queued = redis.call('ZCARD', K_QUEUED)
  if #head < queued then held = math.floor(held * queued / #head) end
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
  held,
}
