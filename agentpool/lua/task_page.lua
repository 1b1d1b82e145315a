-- ARGV: prefix, set ('queued' | 'delayed' | 'deferred' | 'leases' | 'dead'), offset, limit, newest first (1|0),
-- preview bytes
-- Read-only. Returns {size of the set, then per task of the page: id, the fields a task list
-- shows (state, payload, attempts, prio, created, started, finished, error, owner, max,
-- progress, tenant; payload and error cut to their first preview bytes), the byte sizes of
-- payload, error and its 'next:' list (the tasks submitted to run after it), then 1 when it
-- waits for its tenant's cap}, so a page of a task list is one round trip that never carries
-- a whole payload or a result.
-- The queued tasks are those of the queue, in claim order, then those parked for their
-- tenant's cap (common.lua's caps), each tenant's in their order, tenants by name.
local first = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local cut = tonumber(ARGV[6])
local sets = {P .. ARGV[2]}
if ARGV[2] == 'queued' then
  local tenants = redis.call('SMEMBERS', K_PARKED)
  table.sort(tenants)
  for _, tenant in ipairs(tenants) do sets[#sets + 1] = parked_key(tenant) end
end
local size, picked = 0, {}
for s, key in ipairs(sets) do
  local n = redis.call('ZCARD', key)
  size = size + n
  if want > 0 and first < n then
    local ids
    if ARGV[5] == '1' then
      ids = redis.call('ZREVRANGE', key, first, first + want - 1)
    else
      ids = redis.call('ZRANGE', key, first, first + want - 1)
    end
    for _, id in ipairs(ids) do picked[#picked + 1] = {id, s > 1 and 1 or 0} end
    want = want - #ids
    first = 0
  else
    first = math.max(0, first - n)
  end
end
local out = {size}
for _, pick in ipairs(picked) do
  local id = pick[1]
  local f = redis.call('HMGET', task_key(id), 'state', 'payload', 'attempts', 'prio', 'created',
    'started', 'finished', 'error', 'owner', 'max', 'progress', 'tenant', 'dn')
  local sizes = {0, 0, 0, pick[2]}
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
