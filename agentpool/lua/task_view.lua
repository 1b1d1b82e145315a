-- ARGV: prefix, task id, bytes
-- Read-only. Returns the task's fields (state, payload, attempts, prio, created, started,
-- finished, result, error, owner, max, progress, expires, timeout, after, tenant) with
-- payload, result and
-- error cut to their first `bytes` bytes, then the byte sizes of those three, then 1 when it is
-- queued but parked for its tenant's cap (common.lua's caps): a page showing a task never
-- carries a whole big payload or result.
local cut = tonumber(ARGV[3])
local f = redis.call('HMGET', task_key(ARGV[2]), 'state', 'payload', 'attempts', 'prio',
  'created', 'started', 'finished', 'result', 'error', 'owner', 'max', 'progress', 'expires',
  'timeout', 'after', 'tenant')
local sizes = {0, 0, 0}
for i, at in ipairs({2, 8, 9}) do
  if f[at] then
    sizes[i] = #f[at]
    f[at] = text_prefix(f[at], cut)
  end
end
local capped = 0
if f[1] == 'queued' and f[16] and redis.call('ZSCORE', parked_key(f[16]), ARGV[2]) then
  capped = 1
end
return {f, sizes, capped}
