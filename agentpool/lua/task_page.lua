-- ARGV: prefix, set ('queued' | 'delayed' | 'deferred' | 'leases' | 'dead'), offset, limit, newest first (1|0),
-- preview bytes (-1: ids only)
-- Read-only. Returns {size of the set, then per task of the page: id, the fields a task list
-- shows (state, payload, attempts, prio, created, started, finished, error, owner, max,
-- progress, tenant; payload and error cut to their first preview bytes), the byte sizes of
-- payload, error and its 'next:' list (the tasks submitted to run after it), then 1 when it
-- waits for its tenant's cap}, so a page of a task list is one round trip that never carries
-- a whole payload or a result. With preview bytes -1: {size, then per task its id and 1 when
-- it waits for its tenant's cap}.
-- The queued tasks are those of the queue, then those parked for their tenant's cap, then the
-- delayed tasks already due (common.lua's queued_pick).
local first = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local cut = tonumber(ARGV[6])
local size, ids, parked
if ARGV[2] == 'queued' then
  size, ids, parked = queued_pick(first, want)
else
  local key = P .. ARGV[2]
  size, parked = redis.call('ZCARD', key), {}
  if want < 1 then
    ids = {}
  elseif ARGV[5] == '1' then
    ids = redis.call('ZREVRANGE', key, first, first + want - 1)
  else
    ids = redis.call('ZRANGE', key, first, first + want - 1)
  end
end
local out = {size}
for i, id in ipairs(ids) do
  local flag = parked[i] and 1 or 0
  if cut < 0 then
    out[#out + 1] = id
    out[#out + 1] = flag
  else
    local f = redis.call('HMGET', task_key(id), 'state', 'payload', 'attempts', 'prio',
      'created', 'started', 'finished', 'error', 'owner', 'max', 'progress', 'tenant', 'dn')
    local sizes = {0, 0, 0, flag}
    if f[13] then sizes[3] = redis.call('STRLEN', next_key(id)) end
    f[13] = nil
    for j, at in ipairs({2, 8}) do
      if f[at] then
        sizes[j] = #f[at]
        f[at] = text_prefix(f[at], cut)
      end
    end
    out[#out + 1] = id
    out[#out + 1] = f
    out[#out + 1] = sizes
  end
end
return out
