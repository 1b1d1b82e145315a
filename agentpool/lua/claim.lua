-- ARGV: prefix, worker id, count, lease_ms, promote limit, token prefix (random per call)
-- Moves due delayed tasks to the queue, then leases up to `count` tasks to the worker.
-- Returns {tasks, next_due_ms|false, now, tasks left queued}; each task is
-- {id, token, attempts, payload, created_ms, max_attempts, checkpoint|false,
-- timeout_ms|false, after|false, tenant|false, ready_ms}; after: the ids of the tasks it runs
-- after, comma-separated; ready_ms: when it was last ready to run (its submit, the end of its
-- delay or backoff, of the tasks it ran after, its requeue: its 'due', when later).
-- A task past its `expires` time is not leased: it ends cancelled, with why.
-- One fencing INCRBY, one lease ZADD, one owner SADD and one SET that remembers the claim (a
-- claim sent again is answered from it) per claim, whatever its size (one INCRBY more per
-- pop again for tasks that could not run).
-- Keys: KEYS[1] and keys under ARGV[1], the queue's prefix: one hash slot (common.lua).
local worker, count, lease_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local promote = tonumber(ARGV[5])
-- A claim sent again (its connection was lost after Redis ran it, and its reply with it)
-- hands back what it took the first time and takes nothing more: those tasks would otherwise
-- wait out their lease, an attempt spent. The token prefix of a worker's last claim that took
-- tasks is kept a minute. Such a claim writes nothing (a full Redis answers it too).
local prefix = ARGV[6]
local last_claim = P .. 'claimed:' .. worker
local resent = prefix and redis.call('GET', last_claim) == prefix
if not resent then refuse_when_full() end
local SKIPPED_PER_CLAIM = 200
local PARKED_PER_CLAIM = 1000
local UNPARK_LOOK_MS = 1000
local PARK_BATCH = 64
local ENDED = {succeeded = true, cancelled = true, dead = true}
local now = now_ms()
-- the delayed head: the due tasks to promote and, after them, the next due time
local head = redis.call('ZRANGE', K_DELAYED, 0, resent and 0 or promote, 'WITHSCORES')
if resent then promote = 0 end
local nxt = false
local due, back, entering = {}, {}, {}
for i = 1, #head, 2 do
  if #due >= promote or tonumber(head[i + 1]) > now then
    nxt = head[i + 1]
    break
  end
  local id = head[i]
  due[#due + 1] = id
  local tk = task_key(id)
  local f = redis.call('HMGET', tk, 'score', 'started', 'tenant', 'seq')
  if f[1] then
    redis.call('HSET', tk, 'state', 'queued')
    -- a retry keeps its place; a delayed submit takes its turn now (common.lua's fair()),
    -- those due together in their submit order
    if f[2] then
      fair().hold(f[1])
      back[#back + 1] = f[1]
      back[#back + 1] = id
    else
      entering[#entering + 1] = {id, tk, f[1], f[3], f[4],
        tonumber(f[4]) or tonumber(f[1]) % PRIORITY_BAND}
    end
  end
end
table.sort(entering, function(a, b) return a[6] < b[6] end)
for _, e in ipairs(entering) do
  back[#back + 1] = fair().entry(e[2], e[3], e[4], e[5])
  back[#back + 1] = e[1]
end
if fair_made then fair_made.flush() end
if #due > 0 then redis.call('ZREM', K_DELAYED, unpack(due)) end
if #back > 0 then redis.call('ZADD', K_QUEUED, unpack(back)) end
local out = {}
local pod = string.match(worker, '^(.*):[^:]*$') or worker
local taken = 0
-- f: the task's payload, created, max, attempts, cp and timeout fields, in that order.
local function claimed(id, token, attempts, f, after, tenant, due)
  local checkpoint = false
  if f[5] then checkpoint = redis.call('GET', checkpoint_key(id)) end
  local created = tonumber(f[2]) or 0
  return {id, token, attempts, f[1] or '', created, max_attempts(f[3]), checkpoint,
    f[6] or false, after or false, tenant or false, math.max(created, tonumber(due) or 0)}
end
if resent then
  for _, id in ipairs(redis.call('SMEMBERS', owner_key(worker))) do
    local f = redis.call('HMGET', task_key(id), 'payload', 'created', 'max', 'attempts', 'cp',
      'timeout', 'state', 'owner', 'token', 'after', 'tenant', 'due')
    if f[7] == 'running' and f[8] == worker and f[9]
        and string.sub(f[9], 1, #prefix) == prefix then
      out[#out + 1] = claimed(id, f[9], tonumber(f[4]), f, f[10], f[11], f[12])
    end
  end
  local function fence_of(task) return tonumber(string.sub(task[2], #prefix + 1)) end
  table.sort(out, function(a, b) return fence_of(a) < fence_of(b) end)
elseif not drain_requested(worker, pod) then
  -- Room that no run's end reported (a cap raised or removed by hand, a tenant's waiting
  -- task cancelled after its runs were handed back): a claim looks once a second at most
  -- (common.lua's caps), so that no task stays parked while a worker of its queue lives.
  if redis.call('EXISTS', K_PARKED) == 1
      and redis.call('SET', P .. 'unpark_look', '1', 'NX', 'PX', UNPARK_LOOK_MS) then
    unpark_all()
  end
  local leases, held = {}, {}
  -- Tasks that cannot run (expired, or without a record to run) take no place in the claim:
  -- it pops again for them, up to SKIPPED_PER_CLAIM of them (each is a few writes).
  local skipped = 0
  -- Tasks of a tenant with as many runs as its cap are parked (common.lua's caps), up to
  -- PARKED_PER_CLAIM of them (popping PARK_BATCH at a time once one was); the tasks popped
  -- beyond the claim's count go back at their places.
  local put_back, parked, room = {}, 0, {}
  -- The runs this claim may still start for `tenant`; false for a tenant without a cap.
  local function room_for(tenant)
    if room[tenant] == nil then
      local cap = tenant_cap(tenant)
      room[tenant] = cap and cap - tenant_runs(tenant) or false
    end
    return room[tenant]
  end
  while #held < count and skipped < SKIPPED_PER_CLAIM and parked < PARKED_PER_CLAIM do
    local want = count - #held
    if parked > 0 then want = math.max(want, PARK_BATCH) end
    local popped = redis.call('ZPOPMIN', K_QUEUED, want)
    local n = #popped / 2
    if n == 0 then break end
    if taken == 0 then
      -- Known before its first heartbeat, so requeue_pod finds what it holds.
      redis.call('ZADD', K_WORKERS, 'NX', now, worker)
    end
    taken = taken + n
    local fence = redis.call('INCRBY', P .. 'fence', n) - n
    for i = 1, n do
      local id, score = popped[2 * i - 1], popped[2 * i]
      local tk = task_key(id)
      local f = #held < count and redis.call('HMGET', tk, 'payload', 'created', 'max',
        'attempts', 'cp', 'timeout', 'expires', 'ev', 'after', 'tenant', 'due', 'state')
      local expires = f and tonumber(f[7])  -- a field written by hand may be no number
      local tenant = f and f[10] and caps_on() and f[10]
      if not f then
        put_back[#put_back + 1] = score
        put_back[#put_back + 1] = id
      elseif ENDED[f[12]] then
        -- Ended while its id waited (an older producer's cancel took a parked task out of
        -- the queue but not out of its tenant's parked set): dropped, never run.
        skipped = skipped + 1
      elseif expires and now >= expires then
        local what = 'not started'
        if redis.call('HEXISTS', tk, 'started') == 1 then what = 'not started again' end
        expired(id, tk, now, {ev = f[8] or false, cp = f[5] or false}, expires, f[2], what, '')
        skipped = skipped + 1
      elseif tenant and (f[1] or f[4]) and room_for(tenant) and room[tenant] <= 0 then
        redis.call('ZADD', parked_key(tenant), score, id)
        redis.call('SADD', K_PARKED, tenant)
        if expires then redis.call('ZADD', K_PARKED_EXPIRY, expires, id) end
        parked = parked + 1
      elseif f[1] or f[4] then
        -- The random prefix keeps tokens unique when a failover rolls the counter back.
        local token = (prefix or '') .. (fence + i)
        local attempts = tonumber(f[4] or '0') + 1
        redis.call('HSET', tk, 'state', 'running', 'owner', worker, 'token', token,
          'started', now, 'attempts', attempts)
        leases[#leases + 1] = now + lease_ms
        leases[#leases + 1] = id
        held[#held + 1] = id
        out[#out + 1] = claimed(id, token, attempts, f, f[9], f[10], f[11])
        if tenant then
          -- every tenant's runs are counted while the queue has caps: a cap given to a
          -- tenant later counts the runs it has
          redis.call('SADD', runs_key(tenant), id)
          if room[tenant] then room[tenant] = room[tenant] - 1 end
        end
      else
        if redis.call('EXISTS', tk) == 1 then
          -- A record without payload or attempts was written behind the protocol's back: it
          -- cannot run, and it must not vanish either.
          finished(id, tk, 'dead', now, {ev = false, cp = false},
            {'error', 'the task record has no payload (written outside the agentpool protocol)'})
        end
        skipped = skipped + 1
      end
    end
    if n < want then break end
  end
  -- (in slices: Lua's unpack takes a few thousand values at most)
  for first = 1, #put_back, 2000 do
    redis.call('ZADD', K_QUEUED, unpack(put_back, first, math.min(first + 1999, #put_back)))
  end
  if #held > 0 then
    for first = 1, #held, 1000 do
      local last = math.min(first + 999, #held)
      redis.call('ZADD', K_LEASES, unpack(leases, 2 * first - 1, 2 * last))
      redis.call('SADD', owner_key(worker), unpack(held, first, last))
    end
    if prefix then redis.call('SET', last_claim, prefix, 'EX', 60) end
  end
end
-- Nothing left to claim: wake-up signals still in the list are stale (this claim took the
-- tasks they announced); drop them so idle workers do not spin on them. Tasks left behind
-- (the claim was full): pass a signal on to the next idle worker.
local left = redis.call('ZCARD', K_QUEUED)
if left == 0 then
  redis.call('DEL', K_WAKE)
elseif taken > 0 then
  wake(1)
end
return {out, nxt, now, left}
