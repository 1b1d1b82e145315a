-- ARGV: prefix
-- After the caps on tenants' runs changed (TaskQueue.set_tenant_caps): each tenant with
-- tasks parked for its cap that now has room (or no cap) gets as many of them back in the
-- queue, at their places, and idle workers are woken for them (common.lua's caps).
-- Returns the tasks moved back.
local before = redis.call('ZCARD', K_QUEUED)
if redis.call('EXISTS', K_PARKED) == 1 then unpark_all() end
return redis.call('ZCARD', K_QUEUED) - before
