-- ARGV: prefix, worker liveness window ms
-- The worker instances that heart-beat within the window, newest first; each is
-- {worker id, last heartbeat ms, info JSON | false, tasks leased to it, drain requested 1|0}.
-- Tasks leased are counted from the instance's owner set: the leases the running list shows.
local window = tonumber(ARGV[2])
local now = now_ms()
local out = {}
local live = redis.call('ZREVRANGEBYSCORE', K_WORKERS, '+inf', now - window, 'WITHSCORES')
for i = 1, #live, 2 do
  local worker = live[i]
  local pod = string.match(worker, '^(.*):[^:]*$') or worker
  out[#out + 1] = {
    worker, live[i + 1], redis.call('HGET', worker_key(worker), 'info'),
    redis.call('SCARD', owner_key(worker)), drain_requested(worker, pod) and 1 or 0,
  }
end
return out
