-- ARGV: prefix, id, token, state (JSON)
-- Saves the run's checkpoint, fenced like a completion: only the current lease holder's write
-- is accepted. Returns 1 when saved, 0 when refused (counted as checkpoints_refused).
local id, token, state = ARGV[2], ARGV[3], ARGV[4]
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'token', 'cp')
if f[1] ~= 'running' or f[2] ~= token then
  redis.call('HINCRBY', K_STATS, 'checkpoints_refused', 1)
  return 0
end
redis.call('SET', checkpoint_key(id), state)
if not f[3] then redis.call('HSET', tk, 'cp', '1') end
return 1
