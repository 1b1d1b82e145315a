-- ARGV: prefix, set ('queued' | 'delayed' | 'deferred' | 'leases' | 'dead'), offset, limit, newest first (1|0),
-- preview bytes
-- Read-only. Returns {size of the set, then per task of the page: id, the fields a task list
-- shows (state, payload, attempts, prio, created, started, finished, error, owner, max,
-- progress, tenant; payload and error cut to their first preview bytes), the byte sizes of
-- payload, error and its 'next:' list (the tasks submitted to run after it)}, so a page of a
-- task list is one round trip that never carries a whole payload or a result.
local key = P .. ARGV[2]
local first = tonumber(ARGV[3])
local last = first + tonumber(ARGV[4]) - 1
local cut = tonumber(ARGV[6])
local ids
if ARGV[5] == '1' then
  ids = redis.call('ZREVRANGE', key, first, last)
else
  ids = redis.call('ZRANGE', key, first, last)
end
local out = {redis.call('ZCARD', key)}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', task_key(id), 'state', 'payload', 'attempts', 'prio', 'created',
    'started', 'finished', 'error', 'owner', 'max', 'progress', 'tenant', 'dn')
  local sizes = {0, 0, 0}
  if f[13] then sizes[3] = redis.call('STRLEN', next_key(id)) end
  f[13] = nil
  for i, at in ipairs({2, 8}) do
    if f[at] then
      sizes[i] = #f[at]
      f[at] = text_prefix(f[at], cut)
    end
  end
  out[#out + 1] = id
  out[#out + 1] = f
  out[#out + 1] = sizes
end
return out
