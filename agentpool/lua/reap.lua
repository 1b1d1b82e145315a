-- ARGV: prefix, limit, stale worker age ms
-- The fallback for deaths nobody saw: requeue tasks whose lease has expired, and forget
-- worker instances that stopped heart-beating long ago.
-- Returns {requeued, dead-lettered, cancelled}.
local limit, stale_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local counts = {0, 0, 0}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, limit)) do
  local r = requeue_one(id, 'lease expired', now)
  if r > 0 then counts[r] = counts[r] + 1 end
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - stale_ms)) do
  if redis.call('SCARD', owner_key(w)) == 0 then
    redis.call('ZREM', K_WORKERS, w)
  end
end
return counts
