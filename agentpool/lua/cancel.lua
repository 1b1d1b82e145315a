-- ARGV: prefix, id, call id (random per call); optional: 'waiting' and a submit number, to
--       cancel the task only while it waits to run and was submitted up to that number
-- Returns 'cancelled' (removed before it ran), 'requested' (running: its worker stops it),
-- 'finished' (already in a final state) or 'unknown'; with 'waiting', 'left' for a task that
-- runs, is dead-lettered or was submitted later. The task keeps the id of the call that
-- cancelled it: the same call sent again (its reply was lost) answers 'cancelled' again.
run_when_full()
local id, call = ARGV[2], ARGV[3]
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'ev', 'cp', 'cancelcall', 'dn', 'expires', 'tenant',
  'seq', 'score')
local state = f[1]
if not state then return 'unknown' end
local now = now_ms()
if ARGV[4] == 'waiting' then
  -- a queued task's submit number: its stored `seq` (placed in turn), else its score's
  local submitted = tonumber(f[8]) or (tonumber(f[9] or '0') % PRIORITY_BAND)
  if state == 'running' or state == 'dead' or submitted > tonumber(ARGV[5]) then
    return 'left'
  end
end
if state == 'queued' or state == 'delayed' or state == 'dead' or state == 'deferred' then
  -- first: the write a producer's rules of an earlier version refuse, before any other
  if f[7] and redis.call('ZSCORE', parked_key(f[7]), id) then
    redis.call('ZREM', parked_key(f[7]), id)
    if f[6] then redis.call('ZREM', K_PARKED_EXPIRY, id) end
  end
  redis.call('ZREM', K_QUEUED, id)
  redis.call('ZREM', K_DELAYED, id)
  redis.call('ZREM', K_DEAD, id)
  undefer(id, f[6])
  cancelled(id, tk, now, {ev = f[2], cp = f[3], dn = f[5]}, call)
  return 'cancelled'
end
if state == 'running' then
  redis.call('HSET', tk, 'cancel', '1')
  return 'requested'
end
if state == 'cancelled' and call and f[4] == call then return 'cancelled' end
return 'finished'
