-- ARGV: prefix, limit, stale worker age ms
-- The fallback for deaths nobody saw: requeue tasks whose lease has expired, and forget
-- worker instances that stopped heart-beating long ago.
-- Returns {requeued, dead-lettered, cancelled, {holder, outcome, holder, outcome, ...}}: the
-- worker that held each task moved, and what happened to it (1, 2, 3 as the counts).
run_when_full()
local limit, stale_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local counts = {0, 0, 0}
local moved = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, limit)) do
  local holder = redis.call('HGET', task_key(id), 'owner') or ''
  local r = requeue_one(id, 'lease expired', now)
  if r > 0 then
    counts[r] = counts[r] + 1
    moved[#moved + 1] = holder
    moved[#moved + 1] = r
  end
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - stale_ms)) do
  if redis.call('SCARD', owner_key(w)) == 0 then
    redis.call('ZREM', K_WORKERS, w)
  end
end
return {counts[1], counts[2], counts[3], moved}
