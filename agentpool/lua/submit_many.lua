-- ARGV: prefix, priority, then pairs of (id, payload)
-- Queues many tasks in one step (submit_many: no delay, idempotency key or own attempt
-- limit). One INCRBY, ZADD and wake-up for the whole batch. Returns the count.
-- Keys: KEYS[1] and keys under ARGV[1], the queue's prefix: one hash slot (common.lua).
local prio = tonumber(ARGV[2])
local n = (#ARGV - 2) / 2
local now = now_ms()
local seq = redis.call('INCRBY', K_SEQ, n) - n
local band = (9 - prio) * 1099511627776
local scored = {}
for i = 1, n do
  local id, payload = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  local score = band + seq + i
  redis.call('HSET', task_key(id), 'state', 'queued', 'payload', payload, 'prio', prio,
    'score', score, 'created', now)
  scored[#scored + 1] = score
  scored[#scored + 1] = id
end
redis.call('ZADD', K_QUEUED, unpack(scored))
wake(n)
return n
