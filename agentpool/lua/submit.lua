-- ARGV: prefix, then 9 values per task: id, payload, priority, delay_ms, max_attempts
--       ('' = queue default), idempotency key ('' = none), idempotency ttl seconds,
--       expires_ms after the submit ('' = never: see claim.lua), timeout_ms of a run ('' =
--       the pool's task timeout: the worker keeps the shorter of the two).
-- One task, or a group of single submits sent together (agentpool/coalesce.py), each with
-- its own options. Returns {created (1|0), id} per task, flattened: created 0 when the
-- idempotency key already names a task (the existing task's id) or the task exists already
-- (the same submit sent again).
local FIELDS = 9
if (#ARGV - 1) % FIELDS ~= 0 then
  return redis.error_reply('submit: ARGV is the prefix and ' .. FIELDS .. ' values per task')
end
local n = (#ARGV - 1) / FIELDS
local replies = {}
local ids = {}
for i = 1, n do ids[i] = ARGV[2 + (i - 1) * FIELDS] end
local again = submitted_before(ids)
-- First every idempotency key (a key given twice in one group names the first one's task),
-- so that one INCRBY numbers the tasks that are created.
local created, seen = 0, {}
for i = 1, n do
  local at = 1 + (i - 1) * FIELDS
  local id, idem = ARGV[at + 1], ARGV[at + 6]
  local existing
  if again[id] then
    existing = id
  elseif idem ~= '' then
    existing = seen[idem]
    if not existing then
      local ik = P .. 'idem:' .. idem
      existing = redis.call('GET', ik)
      -- A key whose task was purged or expired no longer dedupes: the submit goes ahead.
      if existing and redis.call('EXISTS', task_key(existing)) == 0 then existing = nil end
      if not existing then
        redis.call('SET', ik, id, 'EX', ARGV[at + 7])
        seen[idem] = id
      end
    end
  end
  if existing then
    replies[2 * i - 1], replies[2 * i] = 0, existing
  else
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
    local expires_ms, timeout_ms = ARGV[at + 8], ARGV[at + 9]
    seq = seq + 1
    local score = (9 - prio) * 1099511627776 + seq
    -- No 'id' (the key names it) and no 'attempts' until the first claim (a missing count
    -- is 0).
    local fields = {'payload', payload, 'prio', prio, 'score', score, 'created', now}
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
      redis.call('HSET', task_key(id), 'state', 'delayed', 'due', now + delay_ms,
        unpack(fields))
      delayed[#delayed + 1] = now + delay_ms
      delayed[#delayed + 1] = id
    else
      redis.call('HSET', task_key(id), 'state', 'queued', unpack(fields))
      queued[#queued + 1] = score
      queued[#queued + 1] = id
    end
  end
end
if #delayed > 0 then redis.call('ZADD', K_DELAYED, unpack(delayed)) end
if #queued > 0 then
  redis.call('ZADD', K_QUEUED, unpack(queued))
  wake(#queued / 2)
end
return replies
