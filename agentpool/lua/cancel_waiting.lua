-- ARGV: prefix, last seq (tasks submitted after it are left be), most, delayed offset
-- Cancels, as cancel.lua cancels one, the tasks waiting to run that were submitted up to
-- submit number `last`: queued ones first (the next to run first), then deferred ones (waiting
-- for the tasks they run after), then delayed ones (delayed submits, retries waiting out
-- their backoff) from `delayed offset` on (the entries earlier calls passed over: submitted
-- later). It removes or passes over at most `most` entries, so that Redis serves others
-- between calls. Running tasks are left; the tasks that run after a cancelled one end
-- cancelled with it, whenever they were submitted (finished() in common.lua).
-- Returns {cancelled (those it ended after them included), 1 when there may be more (call
-- again), the delayed offset to go on from}.
-- A queued task's score is its priority band plus its submit number (submit.lua), so within
-- each band the tasks submitted up to `last` are one range of scores.
run_when_full()
local last, most, offset = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local function cancelled_count() return tonumber(redis.call('HGET', K_STATS, 'cancelled') or 0) end
local before = cancelled_count()
local function cancel_all(set, ids)
  if #ids == 0 then return end
  redis.call('ZREM', set, unpack(ids))
  if set == K_DEFERRED then redis.call('ZREM', K_DEFERRED_EXPIRY, unpack(ids)) end
  for _, id in ipairs(ids) do
    local tk = task_key(id)
    local f = redis.call('HMGET', tk, 'state', 'ev', 'cp', 'dn')
    -- a deferred task may have ended already, with a task it runs after cancelled here
    if f[1] == 'queued' or f[1] == 'delayed' or f[1] == 'deferred' then
      cancelled(id, tk, now, {ev = f[2], cp = f[3], dn = f[4]})
    end
  end
end
local function result(more) return {cancelled_count() - before, more, offset} end
-- `budget`: the entries this call may still remove or pass over
local budget = most
for band = 0, 9 do
  local lo = band * PRIORITY_BAND
  local ids = redis.call('ZRANGEBYSCORE', K_QUEUED, lo, lo + last, 'LIMIT', 0, budget)
  cancel_all(K_QUEUED, ids)
  budget = budget - #ids
  if budget <= 0 then return result(1) end
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
    local score = tonumber(redis.call('HGET', task_key(id), 'score') or '0')
    if score % PRIORITY_BAND <= last then
      ids[#ids + 1] = id
    else
      offset = offset + 1
    end
  end
  cancel_all(K_DELAYED, ids)
end
return result(1)
