-- ARGV: prefix, set ('queued' | 'delayed' | 'deferred' | 'leases' | 'dead' | 'parked:<tenant>'),
--       limit, newest
-- first (1|0), the id and score of the last task the previous page ended with ('' for the
-- first page)
-- Read-only. Returns {size of the set, then per task of the page: its id, score, tenant (''
-- for none) and since when it is ready to run (ms, '' if unknown: its submit, or its 'due'
-- when later, as claim.lua counts a run's wait)}: what `agentpool tenants` counts
-- and `agentpool tasks --tenant` picks from, a page per call so that Redis serves others
-- between pages. A page goes on after the previous one's last task, wherever claims or new
-- tasks moved it (or, once it left the set, after its score), so a task is read once.
local key = P .. ARGV[2]
local limit, newest_first, after, after_score = tonumber(ARGV[3]), ARGV[4] == '1', ARGV[5],
  ARGV[6]
local size = redis.call('ZCARD', key)
local start = 0
if after ~= '' then
  local rank = redis.call('ZRANK', key, after)
  if rank and newest_first then rank = size - 1 - rank end
  if rank then
    start = rank + 1
  elseif newest_first then
    start = redis.call('ZCOUNT', key, after_score, '+inf')
  else
    start = redis.call('ZCOUNT', key, '-inf', after_score)
  end
end
local ids
if newest_first then
  ids = redis.call('ZREVRANGE', key, start, start + limit - 1, 'WITHSCORES')
else
  ids = redis.call('ZRANGE', key, start, start + limit - 1, 'WITHSCORES')
end
local out = {size}
for i = 1, #ids, 2 do
  local f = redis.call('HMGET', task_key(ids[i]), 'tenant', 'created', 'due')
  local ready = tonumber(f[2])
  if ready and tonumber(f[3]) then ready = math.max(ready, tonumber(f[3])) end
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = f[1] or ''
  out[#out + 1] = ready and string.format('%d', ready) or ''
end
return out
