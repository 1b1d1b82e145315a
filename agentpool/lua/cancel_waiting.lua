-- ARGV: prefix, last seq (tasks submitted after it are left be), most, delayed offset, queued
--       band and queued offset (where the last call stopped in the queue)
-- Cancels, as cancel.lua cancels one, the tasks waiting to run that were submitted up to
-- submit number `last`: queued ones first (the next to run first), then deferred ones (waiting
-- for the tasks they run after), then delayed ones (delayed submits, retries waiting out
-- their backoff) from `delayed offset` on (the entries earlier calls passed over: submitted
-- later). It removes or passes over at most `most` entries, so that Redis serves others
-- between calls. Running tasks are left; the tasks that run after a cancelled one end
-- cancelled with it, whenever they were submitted (finished() in common.lua).
-- Returns {cancelled (those it ended after them included), 1 when there may be more (call
-- again), the delayed offset, the queued band and the queued offset to go on from, how many
-- queued entries it passed over}.
-- A queued task's score is its priority band plus its submit number (submit.lua), so within
-- each band the tasks submitted up to `last` lie in one range of scores; a tenant's task
-- lies at or before its submit number (its fair place), so that range also holds the
-- tenant's tasks submitted after `last` that took a place before it: they carry their
-- submit number (`seq`) and are passed over.
run_when_full()
local last, most, offset = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local first_band, skip = tonumber(ARGV[5] or '0'), tonumber(ARGV[6] or '0')
local now = now_ms()
local function cancelled_count() return tonumber(redis.call('HGET', K_STATS, 'cancelled') or 0) end
local before = cancelled_count()
-- Cancels those of `ids` (entries of `set`) submitted up to `last`; returns how many it
-- passed over.
local function cancel_all(set, ids)
  local taken, fields = {}, {}
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', task_key(id), 'state', 'ev', 'cp', 'dn', 'seq')
    if not (f[5] and tonumber(f[5]) > last) then
      taken[#taken + 1] = id
      fields[#taken] = f
    end
  end
  if #taken == 0 then return #ids end
  redis.call('ZREM', set, unpack(taken))
  if set == K_DEFERRED then redis.call('ZREM', K_DEFERRED_EXPIRY, unpack(taken)) end
  for i, id in ipairs(taken) do
    local f = fields[i]
    -- a deferred task may have ended already, with a task it runs after cancelled here
    if f[1] == 'queued' or f[1] == 'delayed' or f[1] == 'deferred' then
      cancelled(id, task_key(id), now, {ev = f[2], cp = f[3], dn = f[4]})
    end
  end
  return #ids - #taken
end
local passed = 0
local function result(more)
  return {cancelled_count() - before, more, offset, first_band, skip, passed}
end
-- `budget`: the entries this call may still remove or pass over
local budget = most
while first_band <= 9 do
  local lo = first_band * PRIORITY_BAND
  local ids = redis.call('ZRANGEBYSCORE', K_QUEUED, lo, lo + last, 'LIMIT', skip, budget)
  local passed_here = cancel_all(K_QUEUED, ids)
  skip, passed = skip + passed_here, passed + passed_here
  budget = budget - #ids
  if budget <= 0 then return result(1) end
  first_band, skip = first_band + 1, 0
end
local ids = redis.call('ZRANGEBYSCORE', K_DEFERRED, '-inf', last, 'LIMIT', 0, budget)
cancel_all(K_DEFERRED, ids)
budget = budget - #ids
if budget <= 0 then return result(1) end
while budget > 0 do
  local page = redis.call('ZRANGE', K_DELAYED, offset, offset + math.min(100, budget) - 1)
  if #page == 0 then return result(0) end
  budget = budget - #page
  local ids = {}
  for _, id in ipairs(page) do
    local f = redis.call('HMGET', task_key(id), 'score', 'seq')
    local submitted = tonumber(f[2]) or (tonumber(f[1] or '0') % PRIORITY_BAND)
    if submitted <= last then
      ids[#ids + 1] = id
    else
      offset = offset + 1
    end
  end
  cancel_all(K_DELAYED, ids)
end
return result(1)
