-- ARGV: prefix, id, token, error, retryable (1|0), retry delay ms, mode
-- mode: 'fail' (the run failed), 'cancel' (stopped on a cancel request),
--       'release' (handed back unfinished by a draining worker: not counted as an attempt).
-- Returns 'retry', 'dead', 'cancelled', 'expired' (no retry could start before the task's
-- expiry: it ended cancelled), 'requeued' or 'stale' (caller no longer holds it); the same
-- report sent again gets the first one's answer.
local id, token, err, retryable = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local delay_ms, mode = tonumber(ARGV[6]), ARGV[7]
local NO_RETRY = 'no retry could start'
local RETRY_EXPIRED = 'expired: ' .. NO_RETRY  -- how expired() words it
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'token', 'owner', 'attempts', 'cancel', 'score',
  'max', 'ev', 'cp', 'retry_of', 'expires', 'created')
if f[2] == token and f[1] ~= 'running' then
  -- This report sent again (its reply was lost; the token stays until the next claim): what
  -- the first one did, by the state it left the task in. A retry may since have come due and
  -- be queued: 'retry_of' names the run whose failure scheduled it.
  if f[1] == 'queued' and f[10] == token then return 'retry' end
  if f[1] == 'cancelled' and f[11]
      and string.sub(redis.call('HGET', tk, 'error') or '', 1, #RETRY_EXPIRED) == RETRY_EXPIRED
  then
    return 'expired'
  end
  local did = {delayed = 'retry', dead = 'dead', cancelled = 'cancelled', queued = 'requeued'}
  return did[f[1]] or 'stale'
end
if f[1] ~= 'running' or f[2] ~= token then return 'stale' end
local now = now_ms()
redis.call('ZREM', K_LEASES, id)
redis.call('SREM', owner_key(f[3]), id)
redis.call('HDEL', tk, 'owner')
local fl = {ev = f[8], cp = f[9]}
if mode == 'cancel' or f[5] == '1' then
  cancelled(id, tk, now, fl)
  return 'cancelled'
end
if mode == 'release' then
  redis.call('HINCRBY', tk, 'attempts', -1)
  requeue(id, tk, f[6], err, now)
  return 'requeued'
end
redis.call('HINCRBY', K_STATS, 'failed', 1)
if retryable and tonumber(f[4]) < max_attempts(f[7]) then
  local expires = tonumber(f[11])
  if expires and now + delay_ms >= expires then
    -- The retry would come due past the task's expiry, when no claim may start it: it ends
    -- now, as expired, rather than wait in the delayed set (and keep its producer waiting).
    expired(id, tk, now, fl, expires, f[12], NO_RETRY,
      '; the last run failed: ' .. err)
    return 'expired'
  end
  run_ended(id, tk)
  redis.call('HSET', tk, 'error', err, 'state', 'delayed', 'due', now + delay_ms,
    'retry_of', token)
  redis.call('ZADD', K_DELAYED, now + delay_ms, id)
  redis.call('HINCRBY', K_STATS, 'retried', 1)
  return 'retry'
end
finished(id, tk, 'dead', now, fl, {'error', err})
return 'dead'
