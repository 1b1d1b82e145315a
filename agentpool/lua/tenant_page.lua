-- ARGV: prefix, set ('queued' | 'delayed' | 'deferred' | 'leases' | 'dead'), offset, limit,
-- newest first (1|0)
-- Read-only. Returns {size of the set, then per task of the page: its id, its tenant ('' for
-- none) and when it was submitted (ms, '' if unknown)}: what `agentpool tenants` counts and
-- `agentpool tasks --tenant` picks from, a page per call so that Redis serves others between
-- pages.
local key = P .. ARGV[2]
local first = tonumber(ARGV[3])
local last = first + tonumber(ARGV[4]) - 1
local ids
if ARGV[5] == '1' then
  ids = redis.call('ZREVRANGE', key, first, last)
else
  ids = redis.call('ZRANGE', key, first, last)
end
local out = {redis.call('ZCARD', key)}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', task_key(id), 'tenant', 'created')
  out[#out + 1] = id
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or ''
end
return out
