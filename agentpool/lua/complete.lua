-- ARGV: prefix, id, token, result (JSON)
-- Returns 1 when recorded, 0 when the caller no longer holds the task (fenced off).
local id, token, result = ARGV[2], ARGV[3], ARGV[4]
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'token', 'owner')
if f[1] ~= 'running' or f[2] ~= token then return 0 end
local now = now_ms()
redis.call('ZREM', K_LEASES, id)
redis.call('SREM', owner_key(f[3]), id)
redis.call('HSET', tk, 'result', result)
redis.call('HDEL', tk, 'error', 'token')
finished(id, tk, 'succeeded', now)
return 1
