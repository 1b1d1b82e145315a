-- ARGV: prefix, set ('queued' | 'delayed' | 'leases' | 'dead'), offset, limit, newest first (1|0)
-- Read-only. Returns {size of the set, then per task of the page: id, its hash as a flat list},
-- so a page of a task list is one round trip.
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
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', task_key(id))
end
return out
