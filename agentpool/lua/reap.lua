-- ARGV: prefix, limit, stale worker age ms
-- The fallback for deaths nobody saw: requeue tasks whose lease has expired, and forget
-- worker instances that stopped heart-beating long ago. Also ends the tasks waiting at the
-- head of the queue (and of the delayed tasks due) that are past their expiry, as the claim
-- that reached them would, and the deferred tasks past theirs; and gives back to the queue
-- the tasks parked for a cap whose tenant has room again.
-- Returns {requeued, dead-lettered, cancelled, {holder, outcome, holder, outcome, ...},
-- expired}: the worker that held each task moved, and what happened to it (1, 2, 3 as the
-- counts); then how many waiting tasks ended as expired.
run_when_full()
local limit, stale_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local counts = {0, 0, 0}
local moved = {}
-- Tasks parked for a cap whose tenant has room that no run's end reported (a cap raised by
-- hand, a run's count lost) go back to the queue, before the runs this reap hands back give
-- back their own room (common.lua's run_ended), and before the sweep below, which ends those
-- of them past their expiry at the head.
if redis.call('EXISTS', K_PARKED) == 1 then unpark_all() end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, limit)) do
  local holder = redis.call('HGET', task_key(id), 'owner') or ''
  local r = requeue_one(id, 'lease expired', now)
  if r > 0 then
    counts[r] = counts[r] + 1
    moved[#moved + 1] = holder
    moved[#moved + 1] = r
  end
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - stale_ms)) do
  if redis.call('SCARD', owner_key(w)) == 0 then
    redis.call('ZREM', K_WORKERS, w)
  end
end
-- Expired tasks waiting at the head would count in the queue depth the autoscaler reads until
-- a claim reached them: a pool at zero replicas would start a pod only to cancel them. From
-- the head of the queue, then of the delayed tasks already due (both counted in the depth),
-- up to the first that may still run: one read each when none has expired. An entry without
-- its record is dropped, as a claim drops it.
local SWEPT_PER_REAP = 200
local swept, looked = 0, 0
local function sweep(key, head)
  while looked < SWEPT_PER_REAP do
    looked = looked + 1
    local ids = head()
    if #ids == 0 then return end
    local id = ids[1]
    local tk = task_key(id)
    local f = redis.call('HMGET', tk, 'expires', 'created', 'ev', 'cp', 'started')
    local expires = tonumber(f[1])
    if not f[2] and redis.call('EXISTS', tk) == 0 then
      redis.call('ZREM', key, id)
    elseif not expires or now < expires then
      return
    else
      redis.call('ZREM', key, id)
      local what = 'not started'
      if f[5] then what = 'not started again' end
      expired(id, tk, now, {ev = f[3] or false, cp = f[4] or false}, expires, f[2], what, '')
      swept = swept + 1
    end
  end
end
sweep(K_QUEUED, function() return redis.call('ZRANGE', K_QUEUED, 0, 0) end)
sweep(K_DELAYED, function()
  return redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, 1)
end)
-- Ends the tasks an expiry index (`index`: id by expiry) holds past their expiry that are
-- still in `state`, once `leave(id, tenant)` took each out of where it waits (false: it was
-- not there). An entry whose task left that state some other way is dropped.
local function sweep_index(index, state, leave)
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0,
    math.max(SWEPT_PER_REAP - looked, 1))
  for _, id in ipairs(due) do
    local tk = task_key(id)
    local f = redis.call('HMGET', tk, 'state', 'tenant', 'expires', 'created', 'ev', 'cp', 'dn',
      'started')
    redis.call('ZREM', index, id)
    local expires = tonumber(f[3])
    if f[1] == state and expires and now >= expires and leave(id, f[2]) then
      local what = 'not started'
      if f[8] then what = 'not started again' end
      expired(id, tk, now, {ev = f[5] or false, cp = f[6] or false, dn = f[7] or false},
        expires, f[4], what, '')
      swept = swept + 1
    end
  end
end
-- Deferred tasks past their expiry, waiting for a task that may run on for long: they end
-- now, not when it ends, and so do the tasks after them.
sweep_index(K_DEFERRED_EXPIRY, 'deferred', function(id)
  redis.call('ZREM', K_DEFERRED, id)
  return true
end)
-- Parked tasks past their expiry, parked behind their tenant's runs for as long as those
-- last: they end now.
sweep_index(K_PARKED_EXPIRY, 'queued', function(id, tenant)
  return tenant and redis.call('ZREM', parked_key(tenant), id) == 1
end)
-- Deferred tasks whose parents have all ended without releasing them: a worker older than
-- `after=` (its image not yet rolled during an upgrade) ends a task without looking for the
-- tasks that run after it. The oldest deferred tasks are looked at, each up to its first
-- parent still going (one read for a task that waits as it should); one whose parents all
-- succeeded is released as the last one's end would have, one with a parent dead or
-- cancelled ends with it. A parent whose record has gone leaves the task as it is. At most
-- 500 parents are read a reap, five tasks' worth at least (a task runs after 100 at most):
-- fan-ins whose first parents have ended would read most of theirs every reap otherwise.
local DEFERRED_LOOKED_PER_REAP, PARENTS_READ_PER_REAP = 50, 500
local parents_read = 0
for _, child in ipairs(redis.call('ZRANGE', K_DEFERRED, 0, DEFERRED_LOOKED_PER_REAP - 1)) do
  if parents_read >= PARENTS_READ_PER_REAP then break end
  local ck = task_key(child)
  local c = redis.call('HMGET', ck, 'state', 'after', 'score', 'due', 'ev', 'cp', 'dn',
    'expires', 'tenant', 'seq')
  local waiting, failed, how = c[1] ~= 'deferred' or not c[2], nil, nil
  for parent in string.gmatch(waiting and '' or c[2], '[^,]+') do
    parents_read = parents_read + 1
    if parents_read > PARENTS_READ_PER_REAP then
      waiting = true
      break
    end
    local state = redis.call('HGET', task_key(parent), 'state')
    if state == 'dead' or state == 'cancelled' then
      failed, how = failed or parent, how or state
    elseif state ~= 'succeeded' then
      waiting = true
      break
    end
  end
  if not waiting then
    undefer(child, c[8])
    if failed then
      finished(child, ck, 'cancelled', now, {ev = c[5], cp = c[6], dn = c[7]},
        {'error', cut_off(failed, how)})
    else
      redis.call('HSET', ck, 'waits', 0)
      release_deferred(child, ck, c[3], c[4], c[9], c[10], now)
    end
  end
end
-- Places a turn or more before their band's clock count as none (common.lua's fair()):
-- dropped, so `fair` holds only the tenants with tasks near or ahead of the turn being served
-- (up to 1,000 a reap, so none is slow).
fair().prune(1000)
return {counts[1], counts[2], counts[3], moved, swept}
