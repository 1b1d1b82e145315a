-- ARGV: prefix, priority, then pairs of (id, payload)
-- Queues many tasks in one step (submit_many: no delay, idempotency key or own attempt
-- limit). One INCRBY, ZADD and wake-up for the whole batch. Returns the count queued: a
-- task that exists already (the same batch sent again) is left as it is.
-- Keys: KEYS[1] and keys under ARGV[1], the queue's prefix: one hash slot (common.lua).
local prio = tonumber(ARGV[2])
local ids = {}
for i = 1, (#ARGV - 2) / 2 do ids[i] = ARGV[1 + 2 * i] end
local again = submitted_before(ids)
local fresh = {}
for i = 1, #ids do
  if not again[ids[i]] then fresh[#fresh + 1] = i end
end
local n = #fresh
if n == 0 then return 0 end
local now = now_ms()
local seq = redis.call('INCRBY', K_SEQ, n) - n
local band = (9 - prio) * PRIORITY_BAND
local placed = fair_exists  -- a queue with tenants: these take turns as one (common.lua)
local scored = {}
for k, i in ipairs(fresh) do
  local id, payload = ids[i], ARGV[2 + 2 * i]
  local score = band + seq + k
  if placed then
    score = fair().place(9 - prio, '', score)
    redis.call('HSET', task_key(id), 'state', 'queued', 'payload', payload, 'prio', prio,
      'score', score, 'created', now, 'seq', seq + k)
  else
    redis.call('HSET', task_key(id), 'state', 'queued', 'payload', payload, 'prio', prio,
      'score', score, 'created', now)
  end
  scored[#scored + 1] = score
  scored[#scored + 1] = id
end
if fair_made then fair_made.flush() end
redis.call('ZADD', K_QUEUED, unpack(scored))
wake(n)
return n
