-- ARGV: prefix, id, payload, priority, delay_ms, max_attempts ('' = queue default),
--       idempotency key ('' = none), idempotency ttl seconds
-- Returns {created (1|0), id}: 0 when the idempotency key already names a task.
local id, payload, prio = ARGV[2], ARGV[3], tonumber(ARGV[4])
local delay_ms, max, idem, idem_ttl = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
if idem ~= '' then
  local ik = P .. 'idem:' .. idem
  local existing = redis.call('GET', ik)
  -- A key whose task was purged or expired no longer dedupes: the submit goes ahead.
  if existing and redis.call('EXISTS', task_key(existing)) == 1 then return {0, existing} end
  redis.call('SET', ik, id, 'EX', idem_ttl)
end
local now = now_ms()
local seq = redis.call('INCR', K_SEQ)
local score = (9 - prio) * 1099511627776 + seq
-- No 'id' (the key names it) and no 'attempts' until the first claim (a missing count is 0).
local fields = {'payload', payload, 'prio', prio, 'score', score, 'created', now}
if max ~= '' then
  fields[#fields + 1] = 'max'
  fields[#fields + 1] = max
end
if idem ~= '' then
  fields[#fields + 1] = 'idem'
  fields[#fields + 1] = idem
end
local tk = task_key(id)
if delay_ms > 0 then
  redis.call('HSET', tk, 'state', 'delayed', 'due', now + delay_ms, unpack(fields))
  redis.call('ZADD', K_DELAYED, now + delay_ms, id)
else
  redis.call('HSET', tk, 'state', 'queued', unpack(fields))
  redis.call('ZADD', K_QUEUED, score, id)
  wake(1)
end
return {1, id}
