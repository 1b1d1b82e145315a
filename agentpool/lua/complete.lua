-- ARGV: prefix, then triples (id, token, result JSON)
-- Records successes (a worker's group commit sends all its completions in one call).
-- Returns, per triple, 1 when recorded (now, or by the same call sent again), 0 when the caller
-- no longer holds the task (fenced off).
-- The token and owner stay on the task: the state alone fences off every later write, and
-- the owner names the run that finished it. The leases go first: a credential that may not
-- touch them (a producer's) is refused before anything changed.
-- Keys: KEYS[1] and keys under ARGV[1], the queue's prefix: one hash slot (common.lua).
local now = now_ms()
local out, ids, owners, fields, results, taken = {}, {}, {}, {}, {}, {}
for i = 2, #ARGV, 3 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', task_key(id), 'state', 'token', 'owner', 'error', 'ev', 'cp',
    'dn')
  if taken[id] then
    -- the same task twice in one call: the first records it, the others are answered as a
    -- resend is
    out[#out + 1] = taken[id] == token and 1 or 0
  elseif f[2] == token and f[1] == 'succeeded' then
    out[#out + 1] = 1  -- this completion sent again (its reply was lost): recorded already
  elseif f[1] ~= 'running' or f[2] ~= token then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
    taken[id] = token
    ids[#ids + 1] = id
    fields[#fields + 1] = f
    results[#results + 1] = ARGV[i + 2]
    local held = owners[f[3]]
    if not held then
      held = {}
      owners[f[3]] = held
    end
    held[#held + 1] = id
  end
end
if #ids == 0 then return out end
redis.call('ZREM', K_LEASES, unpack(ids))
for owner, held in pairs(owners) do redis.call('SREM', owner_key(owner), unpack(held)) end
for n = 1, #ids do
  local id, f = ids[n], fields[n]
  local tk = task_key(id)
  if f[4] then redis.call('HDEL', tk, 'error') end
  finished(id, tk, 'succeeded', now, {ev = f[5], cp = f[6], dn = f[7]}, {'result', results[n]},
    false)
end
redis.call('HINCRBY', K_STATS, 'succeeded', #ids)
return out
