-- ARGV: prefix, action ('requeue' | 'purge'), call id (random per call), upto (ms; '' = now),
-- most, then task ids (none = the oldest `most` of the tasks dead at `upto`)
-- Returns {how many tasks were requeued or purged, how many tasks after them came back, 1 when
-- tasks dead at `upto` remain (call again with the same `upto`), upto}.
-- Every task handled leaves the dead set, so the next call takes the next ones from its head,
-- no cursor needed; `upto` leaves out the tasks that died since the first call (a requeued
-- one that died again), so the calls end. A call that handled any keeps its answer for a
-- minute (`deadcall:<id>`): the same call sent again (its reply lost with its connection) gets
-- it back instead of handling the next ones, so nothing is counted twice or left uncounted.
run_when_full()
local action, call, most = ARGV[2], ARGV[3], tonumber(ARGV[5])
local K_CALL = P .. 'deadcall:' .. call
local answered = redis.call('GET', K_CALL)
if answered then return cmsgpack.unpack(answered) end
local upto = tonumber(ARGV[4]) or now_ms()
local ids = {}
if #ARGV > 5 then
  for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGEBYSCORE', K_DEAD, '-inf', upto, 'LIMIT', 0, most)
end
-- A task cancelled because a task it runs after ended otherwise than succeeded (its error made
-- by cut_off()) waits again once every task it runs after has succeeded or is still to end: the tasks a requeued task's
-- death cancelled come back, and those their cancel cancelled in turn (a list walked from the
-- requeued task, as finished() walks it). A task of which one is still dead, cancelled or
-- gone (its record past the result TTL) stays cancelled: nothing it waits for may be unknown.
local function revive_after(id)
  local reached, revived = {id}, 0
  while #reached > 0 do
    local parent = table.remove(reached)
    for child in string.gmatch(redis.call('GET', next_key(parent)) or '', '[^,]+') do
      local ck = task_key(child)
      local c = redis.call('HMGET', ck, 'state', 'error', 'after', 'score', 'expires', 'seq')
      local plan, missing
      if c[1] == 'cancelled' and c[2] and string.sub(c[2], 1, #CUT_OFF) == CUT_OFF then
        plan, missing = dependencies(c[3] or '')
      end
      if plan and not missing and not plan.failed and #plan.open > 0 then
        redis.call('HDEL', ck, 'finished', 'error')
        redis.call('HSET', ck, 'state', 'deferred', 'waits', #plan.open)
        redis.call('PERSIST', ck)
        redis.call('PERSIST', next_key(child))
        -- by submit number, as submit.lua defers it (a tenant's place is not one)
        redis.call('ZADD', K_DEFERRED, c[6] or tonumber(c[4]) % PRIORITY_BAND, child)
        if c[5] then redis.call('ZADD', K_DEFERRED_EXPIRY, c[5], child) end
        reached[#reached + 1] = child
        revived = revived + 1
      end
    end
  end
  return revived
end
-- The dead set is left last, and HDEL comes before HSET: a credential that may not delete
-- (a producer's) is refused by its first write, before anything changed.
local n, revived, now = 0, 0, now_ms()
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', K_DEAD, id) then
    local tk = task_key(id)
    local score = redis.call('HGET', tk, 'score')
    if action == 'purge' or not score then
      redis.call('DEL', tk, events_key(id), checkpoint_key(id), next_key(id))
    else
      -- requeued by hand: run it, however long ago it was meant to start by
      redis.call('HDEL', tk, 'finished', 'expires')
      redis.call('HSET', tk, 'state', 'queued', 'attempts', 0, 'due', now)
      fair().hold(score)
      redis.call('ZADD', K_QUEUED, score, id)
      wake(1)
      revived = revived + revive_after(id)
    end
    redis.call('ZREM', K_DEAD, id)
    n = n + 1
  end
end
local more = 0
if #ARGV <= 5 and redis.call('ZCOUNT', K_DEAD, '-inf', upto) > 0 then more = 1 end
local out = {n, revived, more, upto}
if n > 0 then redis.call('SET', K_CALL, cmsgpack.pack(out), 'PX', 60000) end
return out
