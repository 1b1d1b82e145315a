-- ARGV: prefix, worker id, count, lease_ms, promote limit, token prefix (random per call)
-- Moves due delayed tasks to the queue, then leases up to `count` tasks to the worker.
-- Returns {tasks, next_due_ms|false, now}; each task is
-- {id, token, attempts, payload, created_ms, max_attempts, checkpoint|nil}.
local worker, count, lease_ms, promote = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, promote)
for _, id in ipairs(due) do
  redis.call('ZREM', K_DELAYED, id)
  local tk = task_key(id)
  local score = redis.call('HGET', tk, 'score')
  if score then
    redis.call('HSET', tk, 'state', 'queued')
    redis.call('ZADD', K_QUEUED, score, id)
  end
end
local out = {}
local pod = string.match(worker, '^(.*):[^:]*$') or worker
if not drain_requested(worker, pod) then
  local popped = redis.call('ZPOPMIN', K_QUEUED, count)
  local owner = owner_key(worker)
  -- Known before its first heartbeat, so requeue_pod finds what it holds.
  if #popped > 0 then redis.call('ZADD', K_WORKERS, 'NX', now, worker) end
  for i = 1, #popped, 2 do
    local id = popped[i]
    local tk = task_key(id)
    if redis.call('EXISTS', tk) == 1 then
      -- The random prefix keeps tokens unique when a failover rolls the counter back.
      local token = (ARGV[6] or '') .. redis.call('INCR', P .. 'fence')
      local attempts = redis.call('HINCRBY', tk, 'attempts', 1)
      redis.call('HSET', tk, 'state', 'running', 'owner', worker, 'token', token, 'started', now)
      redis.call('ZADD', K_LEASES, now + lease_ms, id)
      redis.call('SADD', owner, id)
      local f = redis.call('HMGET', tk, 'payload', 'created', 'max')
      out[#out + 1] = {id, token, attempts, f[1] or '', f[2] or '0', max_attempts(f[3]),
        redis.call('GET', checkpoint_key(id))}
    end
  end
end
-- Nothing left to claim: wake-up signals still in the list are stale (one per submit, and
-- this claim took the tasks they announced); drop them so idle workers do not spin on them.
if redis.call('ZCARD', K_QUEUED) == 0 then redis.call('DEL', K_WAKE) end
local nxt = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
return {out, nxt[2] or false, now}
