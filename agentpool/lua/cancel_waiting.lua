-- ARGV: prefix, last seq (tasks submitted after it are left be), most, delayed cursor, queued
--       band and the queued task passed over last ('' = none): where the last call stopped;
--       each band's highest score to look at, comma-separated ('' = read them now: once per
--       pass, so that tasks placed during it do not keep it going)
-- Cancels, as cancel.lua cancels one, the tasks waiting to run that were submitted up to
-- submit number `last`: queued ones first (the next to run first), then deferred ones (waiting
-- for the tasks they run after), then delayed ones (delayed submits, retries waiting out
-- their backoff) after `delayed cursor` ('' = from the start; else 'score|id' of the last
-- entry an earlier call passed over, as it was submitted later: by its score and id, not its
-- rank, since a claim may promote entries before it between two calls). It removes or passes over at most `most` entries, so that Redis serves others
-- between calls. Running tasks are left; the tasks that run after a cancelled one end
-- cancelled with it, whenever they were submitted (finished() in common.lua).
-- Returns {cancelled (those it ended after them included), 1 when there may be more (call
-- again), the delayed cursor, the queued band and the queued task to go on after, the
-- bands' highest scores}.
-- A queued task's score is its priority band plus its submit number (submit.lua), or a place
-- taken in turn (fair() in common.lua), which may lie before tasks submitted earlier or past
-- the submit counter: within each band, the tasks submitted up to `last` lie at or below
-- the higher of `last` and the band's highest place in `fair`. Tasks there submitted later
-- (their stored `seq`, or their score's submit number) are passed over; a call goes on after
-- the last one it passed over (by its rank, so that claims taking tasks from the head shift
-- nothing), or from the band's start once a claim took it.
run_when_full()
local last, most, cursor = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] or ''
-- Tasks parked for their tenant's cap (common.lua's caps) that were submitted up to `last` go
-- back to the queue at their places first, on every call: a claim between two calls may have
-- parked a task not looked at yet, which goes back behind the last one looked at. (With a
-- producer's rights: ZRANGE, ZREM before ZADD; the set of parked tenants is left to the
-- claims and the reaper to tidy. Each call reads every parked task's submit number.)
if redis.call('EXISTS', K_PARKED) == 1 then
  for _, tenant in ipairs(redis.call('SMEMBERS', K_PARKED)) do
    local pk = parked_key(tenant)
    local page = redis.call('ZRANGE', pk, 0, -1, 'WITHSCORES')
    for first = 1, #page, 2000 do
      local back, ids = {}, {}
      for i = first, math.min(first + 1998, #page - 1), 2 do
        local f = redis.call('HMGET', task_key(page[i]), 'seq', 'score')
        if (tonumber(f[1]) or (tonumber(f[2] or '0') % PRIORITY_BAND)) <= last then
          fair().hold(page[i + 1])
          back[#back + 1] = page[i + 1]
          back[#back + 1] = page[i]
          ids[#ids + 1] = page[i]
        end
      end
      if #ids > 0 then
        redis.call('ZREM', pk, unpack(ids))
        redis.call('ZREM', K_PARKED_EXPIRY, unpack(ids))
        redis.call('ZADD', K_QUEUED, unpack(back))
      end
    end
  end
end
local first_band, after = tonumber(ARGV[5] or '0'), ARGV[6] or ''
local tops = {}
for top in string.gmatch(ARGV[7] or '', '[^,]+') do tops[#tops + 1] = tonumber(top) end
if #tops == 0 then
  for band = 0, 9 do
    local lo = band * PRIORITY_BAND
    local highest = redis.call('ZREVRANGEBYSCORE', K_FAIR, lo + PRIORITY_BAND - 1, lo,
      'WITHSCORES', 'LIMIT', 0, 1)
    tops[band + 1] = math.max(lo + last, tonumber(highest[2]) or lo)
  end
end
local now = now_ms()
local function cancelled_count() return tonumber(redis.call('HGET', K_STATS, 'cancelled') or 0) end
local before = cancelled_count()
-- Cancels those of `ids` (entries of `set`) submitted up to `last`; returns those it passed
-- over, in their order.
local function cancel_all(set, ids)
  local taken, passed_over = {}, {}
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', task_key(id), 'seq', 'score')
    local seq = tonumber(f[1]) or (tonumber(f[2] or '0') % PRIORITY_BAND)
    if seq > last then
      passed_over[#passed_over + 1] = id
    else
      taken[#taken + 1] = id
    end
  end
  if #taken == 0 then return passed_over end
  redis.call('ZREM', set, unpack(taken))
  if set == K_DEFERRED then redis.call('ZREM', K_DEFERRED_EXPIRY, unpack(taken)) end
  for _, id in ipairs(taken) do
    local tk = task_key(id)
    local f = redis.call('HMGET', tk, 'state', 'ev', 'cp', 'dn')
    -- a deferred task may have ended already, with a task it runs after cancelled here
    if f[1] == 'queued' or f[1] == 'delayed' or f[1] == 'deferred' then
      cancelled(id, tk, now, {ev = f[2], cp = f[3], dn = f[4]})
    end
  end
  return passed_over
end
local function result(more)
  local text = {}
  for band = 1, 10 do text[band] = string.format('%.17g', tops[band]) end
  return {cancelled_count() - before, more, cursor, first_band, after, table.concat(text, ',')}
end
-- `budget`: the entries this call may still remove or pass over
local budget = most
while first_band <= 9 do
  local lo = first_band * PRIORITY_BAND
  local top = tops[first_band + 1]
  local start = after ~= '' and redis.call('ZRANK', K_QUEUED, after)
  if start then
    start = start + 1
  else
    start = redis.call('ZCOUNT', K_QUEUED, '-inf', '(' .. lo)
  end
  local page = redis.call('ZRANGE', K_QUEUED, start, start + budget - 1, 'WITHSCORES')
  local ids = {}
  for i = 1, #page, 2 do
    if tonumber(page[i + 1]) > top then break end
    ids[#ids + 1] = page[i]
  end
  local passed_over = cancel_all(K_QUEUED, ids)
  if #passed_over > 0 then after = passed_over[#passed_over] end
  budget = budget - #ids
  if #ids == #page / 2 and #ids > 0 and budget <= 0 then return result(1) end
  first_band, after = first_band + 1, ''
  if budget <= 0 then return result(1) end
end
local ids = redis.call('ZRANGEBYSCORE', K_DEFERRED, '-inf', last, 'LIMIT', 0, budget)
cancel_all(K_DEFERRED, ids)
budget = budget - #ids
if budget <= 0 then return result(1) end
-- The rank just after the cursor's entry: its own rank + 1 while it is there with the same
-- score, else the entries before its place (lower scores, then equal scores with lower ids).
local function delayed_start()
  if cursor == '' then return 0 end
  local sep = string.find(cursor, '|', 1, true)
  local score, id = string.sub(cursor, 1, sep - 1), string.sub(cursor, sep + 1)
  local rank = redis.call('ZRANK', K_DELAYED, id)
  if rank and redis.call('ZSCORE', K_DELAYED, id) == score then return rank + 1 end
  local start = redis.call('ZCOUNT', K_DELAYED, '-inf', '(' .. score)
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', K_DELAYED, score, score)) do
    if other < id then start = start + 1 end
  end
  return start
end
local start = delayed_start()
while budget > 0 do
  local page = redis.call('ZRANGE', K_DELAYED, start, start + math.min(100, budget) - 1,
    'WITHSCORES')
  if #page == 0 then return result(0) end
  budget = budget - #page / 2
  local ids = {}
  for i = 1, #page, 2 do
    local id = page[i]
    local f = redis.call('HMGET', task_key(id), 'score', 'seq')
    local submitted = tonumber(f[2]) or (tonumber(f[1] or '0') % PRIORITY_BAND)
    if submitted <= last then
      ids[#ids + 1] = id
    else
      start = start + 1
      cursor = page[i + 1] .. '|' .. id
    end
  end
  cancel_all(K_DELAYED, ids)
end
return result(1)
