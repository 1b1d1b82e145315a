-- ARGV: prefix, set ('queued' | 'delayed' | 'deferred' | 'leases'), offset, limit
-- Read-only. Returns {size of the set, then per task of the page: its tenant ('' for none)
-- and when it was submitted (ms)}: what `agentpool tenants` counts, a page per call so that
-- Redis serves others between pages.
local key = P .. ARGV[2]
local first = tonumber(ARGV[3])
local ids = redis.call('ZRANGE', key, first, first + tonumber(ARGV[4]) - 1)
local out = {redis.call('ZCARD', key)}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', task_key(id), 'tenant', 'created')
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or ''
end
return out
