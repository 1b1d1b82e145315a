-- ARGV: prefix, worker id, pod, lease_ms, info (JSON), max attempts, result TTL ('' = not
-- given), then pairs of (task id, token)
-- Registers the worker as alive, extends the leases it still holds, and writes the queue's
-- settings (max attempts, result TTL) when they are missing: Redis lost its data (a restart
-- without persistence, a FLUSHALL, a failover to a replica that had not synced), and the
-- tasks submitted since must not run under the defaults.
-- Returns {lost ids, ids with a cancel request, drain requested (1|0), overdue ms, settings
-- written again (1|0)}: overdue is how long ago the queue's earliest lease ran out (0 when
-- none has), so that workers can reap what nobody else did.
run_when_full()
local worker, pod, lease_ms, info = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
redis.call('ZADD', K_WORKERS, now, worker)
local wk = worker_key(worker)
redis.call('HSET', wk, 'info', info, 'heartbeat', now, 'pod', pod)
redis.call('EXPIRE', wk, 86400)
local lost, cancel = {}, {}
for i = 8, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', task_key(id), 'state', 'token', 'cancel')
  if f[1] == 'running' and f[2] == token then
    redis.call('ZADD', K_LEASES, 'XX', now + lease_ms, id)
    if f[3] == '1' then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
local restored = 0
if ARGV[6] ~= '' and redis.call('EXISTS', K_CONFIG) == 0 then
  redis.call('HSET', K_CONFIG, 'max_attempts', ARGV[6], 'result_ttl', ARGV[7])
  restored = 1
end
local overdue = 0
local earliest = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')
if earliest[2] and tonumber(earliest[2]) < now then overdue = now - tonumber(earliest[2]) end
return {lost, cancel, drain_requested(worker, pod) and 1 or 0, overdue, restored}
