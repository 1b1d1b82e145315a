-- ARGV: prefix, then 10 values per task: id, payload, priority, delay_ms, max_attempts
--       ('' = queue default), idempotency key ('' = none), idempotency ttl seconds,
--       expires_ms after the submit ('' = never: see claim.lua), timeout_ms of a run ('' =
--       the pool's task timeout: the worker keeps the shorter of the two), the ids of the
--       tasks of this queue it runs after, comma-separated ('' = none), its tenant ('' =
--       none: see fair() in common.lua).
-- One task, or a group of single submits sent together (agentpool/coalesce.py), each with
-- its own options. Returns {created (1|0|-1), id} per task, flattened: created 0 when the
-- idempotency key already names a task (the existing task's id) or the task exists already
-- (the same submit sent again); -1 when a task it runs after does not exist (that task's id):
-- nothing of it is stored.
-- A task that runs after others waits in the 'deferred' state, out of the queue, until the
-- last of them succeeds; it ends cancelled as soon as one of them ends otherwise (at once when
-- one already has). Its id is appended to each one's 'next:' key (finished() in common.lua);
-- one born cancelled is listed too, in each that has not succeeded, so that requeuing a dead
-- one brings it back (dead_letters.lua).
local FIELDS = 11
if (#ARGV - 1) % FIELDS ~= 0 then
  return redis.error_reply('submit: ARGV is the prefix and ' .. FIELDS .. ' values per task')
end
local n = (#ARGV - 1) / FIELDS
local replies = {}
local ids = {}
for i = 1, n do ids[i] = ARGV[2 + (i - 1) * FIELDS] end
local again = submitted_before(ids)
-- Lists the task in the 'next:' key of each task it waits for (finished() reads it): the ids
-- gathered per parent, in order, and written with one APPEND and one HSET of its 'dn' flag
-- each once the tasks are stored (a fan-out of many tasks after many parents is not a write
-- per task and parent).
local listed, parents = {}, {}
local ended_cancelled = {}  -- parents that ended cancelled: their list lasts no longer than them
local function wait_for(id, of)
  for _, parent in ipairs(of) do
    local ids_after = listed[parent]
    if not ids_after then
      ids_after = {}
      listed[parent] = ids_after
      parents[#parents + 1] = parent
    end
    ids_after[#ids_after + 1] = id
  end
end
-- First every idempotency key (a key given twice in one group names the first one's task),
-- so that one INCRBY numbers the tasks that are created.
local created, seen, plans = 0, {}, {}
local plan_of = {}  -- by `after` value: the group's tasks after the same tasks read them once
for i = 1, n do
  local at = 1 + (i - 1) * FIELDS
  local id, idem, after = ARGV[at + 1], ARGV[at + 6], ARGV[at + 10]
  local existing, missing
  if again[id] then
    existing = id
  elseif idem ~= '' then
    existing = seen[idem]
    if not existing then
      existing = redis.call('GET', P .. 'idem:' .. idem)
      -- A key whose task was purged or expired no longer dedupes: the submit goes ahead.
      if existing and redis.call('EXISTS', task_key(existing)) == 0 then existing = nil end
    end
  end
  if not existing and after ~= '' then
    local known = plan_of[after]
    if not known then
      known = {dependencies(after)}
      plan_of[after] = known
    end
    plans[i], missing = known[1], known[2]
  end
  if missing then
    replies[2 * i - 1], replies[2 * i] = -1, missing
  elseif existing then
    replies[2 * i - 1], replies[2 * i] = 0, existing
  else
    if idem ~= '' then
      redis.call('SET', P .. 'idem:' .. idem, id, 'EX', ARGV[at + 7])
      seen[idem] = id
    end
    replies[2 * i - 1], replies[2 * i] = 1, id
    created = created + 1
  end
end
if created == 0 then return replies end
local now = now_ms()
local seq = redis.call('INCRBY', K_SEQ, created) - created
local queued, delayed = {}, {}
for i = 1, n do
  if replies[2 * i - 1] == 1 then
    local at = 1 + (i - 1) * FIELDS
    local id, payload, prio = ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
    local delay_ms, max, idem = tonumber(ARGV[at + 4]), ARGV[at + 5], ARGV[at + 6]
    local expires_ms, timeout_ms, after = ARGV[at + 8], ARGV[at + 9], ARGV[at + 10]
    local tenant = ARGV[at + 11]
    seq = seq + 1
    local plan = plans[i]
    local waits = plan and (plan.failed or #plan.open > 0)
    -- By submit number, unless it is queued now and takes its turn as a tenant's (or as one
    -- without a tenant on a queue that has tenants: common.lua's fair()); a delayed or
    -- deferred one takes its turn when it enters the queue.
    local score = (9 - prio) * PRIORITY_BAND + seq
    local placed = not waits and delay_ms <= 0 and (tenant ~= '' or fair_exists)
    if placed then score = fair().place(9 - prio, tenant, score) end
    -- No 'id' (the key names it) and no 'attempts' until the first claim (a missing count
    -- is 0).
    local fields = {'payload', payload, 'prio', prio, 'score', score, 'created', now}
    if tenant ~= '' then
      fields[#fields + 1] = 'tenant'
      fields[#fields + 1] = tenant
    end
    if tenant ~= '' or placed then
      -- its place may lie before tasks submitted earlier: its submit number is kept
      fields[#fields + 1] = 'seq'
      fields[#fields + 1] = seq
    end
    if max ~= '' then
      fields[#fields + 1] = 'max'
      fields[#fields + 1] = max
    end
    if idem ~= '' then
      fields[#fields + 1] = 'idem'
      fields[#fields + 1] = idem
    end
    if expires_ms ~= '' then
      fields[#fields + 1] = 'expires'
      fields[#fields + 1] = now + tonumber(expires_ms)
    end
    if timeout_ms ~= '' then
      fields[#fields + 1] = 'timeout'
      fields[#fields + 1] = timeout_ms
    end
    if delay_ms > 0 then
      fields[#fields + 1] = 'due'
      fields[#fields + 1] = now + delay_ms
    end
    if plan then
      fields[#fields + 1] = 'after'
      fields[#fields + 1] = after
    end
    local tk = task_key(id)
    if plan and plan.failed then
      -- as finished() ends a task; no producer can be waiting for this one yet
      redis.call('HSET', tk, 'state', 'cancelled', 'finished', now, 'error',
        cut_off(plan.failed, plan.how),
        unpack(fields))
      redis.call('EXPIRE', tk, result_ttl())
      redis.call('HINCRBY', K_STATS, 'cancelled', 1)
      -- listed as a task that waited would be, so that requeuing the dead one (and so the
      -- cancelled ones after it) brings it back (dead_letters.lua); the list of a task that
      -- ended cancelled lasts no longer than its record
      wait_for(id, plan.open)
      wait_for(id, plan.dead)
      wait_for(id, plan.ended_cancelled)
      for _, parent in ipairs(plan.ended_cancelled) do ended_cancelled[parent] = true end
    elseif plan and #plan.open > 0 then
      redis.call('HSET', tk, 'state', 'deferred', 'waits', #plan.open, unpack(fields))
      redis.call('ZADD', K_DEFERRED, seq, id)
      if expires_ms ~= '' then
        redis.call('ZADD', K_DEFERRED_EXPIRY, now + tonumber(expires_ms), id)
      end
      wait_for(id, plan.open)
    elseif delay_ms > 0 then
      redis.call('HSET', tk, 'state', 'delayed', unpack(fields))
      delayed[#delayed + 1] = now + delay_ms
      delayed[#delayed + 1] = id
    else
      redis.call('HSET', tk, 'state', 'queued', unpack(fields))
      queued[#queued + 1] = score
      queued[#queued + 1] = id
    end
  end
end
for _, parent in ipairs(parents) do
  local key = next_key(parent)
  redis.call('APPEND', key, table.concat(listed[parent], ',') .. ',')
  redis.call('HSET', task_key(parent), 'dn', '1')
  if ended_cancelled[parent] then redis.call('EXPIRE', key, result_ttl()) end
end
if fair_made then fair_made.flush() end
if #delayed > 0 then redis.call('ZADD', K_DELAYED, unpack(delayed)) end
if #queued > 0 then
  redis.call('ZADD', K_QUEUED, unpack(queued))
  wake(#queued / 2)
end
return replies
