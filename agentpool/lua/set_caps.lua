-- ARGV: prefix, then pairs (tenant, cap): the caps on tenants' runs the queue is to hold
-- ('' for the default's tenant; none: no caps)
-- Replaces the queue's caps (TaskQueue.set_tenant_caps, common.lua's caps) and, in the same
-- step, brings the count of runs in line with them, so that no claim falls between the two:
-- - caps set where there were none: each tenant with runs in progress (the leased tasks
--   running with its name) gets exactly those as its `runs:<tenant>`, which a claim while
--   the queue had no caps did not add to and a run's end then did not remove from;
-- - the last caps removed: the `runs:` of each tenant with runs in progress goes, since no
--   run's end will remove its ids until caps come back.
-- A `runs:` this leaves (of a tenant with no run in progress) holds ids without a lease,
-- which a count drops (tenant_runs). Each changes one read per running task, only then.
-- Then each tenant with tasks parked that now has room (or no cap) gets as many of them
-- back in the queue, at their places, and idle workers are woken for them.
-- Returns the tasks moved back.
local on = #ARGV > 1
local was_on = caps_on()
redis.call('DEL', K_CAPS)
if on then redis.call('HSET', K_CAPS, unpack(ARGV, 2)) end
caps_exist = on
if on ~= was_on then
  local runs, tenants = {}, {}
  for _, id in ipairs(redis.call('ZRANGE', K_LEASES, 0, -1)) do
    local t = redis.call('HMGET', task_key(id), 'tenant', 'state')
    if t[1] and t[2] == 'running' then
      local ids = runs[t[1]]
      if not ids then
        ids = {}
        runs[t[1]] = ids
        tenants[#tenants + 1] = t[1]
      end
      ids[#ids + 1] = id
    end
  end
  for _, tenant in ipairs(tenants) do
    local rk, ids = runs_key(tenant), runs[tenant]
    redis.call('DEL', rk)
    if on then
      -- (in slices: Lua's unpack takes a few thousand values at most)
      for first = 1, #ids, 1000 do
        redis.call('SADD', rk, unpack(ids, first, math.min(first + 999, #ids)))
      end
    end
  end
end
local before = redis.call('ZCARD', K_QUEUED)
if redis.call('EXISTS', K_PARKED) == 1 then unpark_all() end
return redis.call('ZCARD', K_QUEUED) - before
