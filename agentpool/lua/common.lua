-- Definitions the scripts share: each script gets those it uses (agentpool/lua_source.py).
-- ARGV[1] is the queue's key prefix "ap:{queue}:"; every key of a queue shares its hash tag,
-- and KEYS[1] (the queued set) routes the script to that slot on Redis Cluster.
-- Cluster: every script declares KEYS[1] = P .. 'queued' and touches only keys (and the
-- 'done' shard channel) built as P .. <suffix>, task and worker ids included. Queue names hold
-- no braces, so the first {...} of each such name is {queue}: its slot is that of KEYS[1],
-- and a script never touches another queue or leaves the node that runs it.
-- A task's hash carries flags that spare a lookup per task: 'ev' (it has an event stream),
-- 'cp' (it has a checkpoint) and 'dn' (tasks wait for it to succeed, listed in its 'next:'
-- key), set by the scripts that create them.
local P = ARGV[1]
local K_QUEUED = P .. 'queued'
local K_DELAYED = P .. 'delayed'
local K_LEASES = P .. 'leases'
local K_DEAD = P .. 'dead'
local K_WORKERS = P .. 'workers'
local K_DRAIN = P .. 'drain'
local K_WAKE = P .. 'wake'
local K_STATS = P .. 'stats'
local K_SEQ = P .. 'seq'
local K_CONFIG = P .. 'config'
local K_DONE = P .. 'done'
local K_LISTENING = P .. 'listening'
local K_DEFERRED = P .. 'deferred'
-- The deferred tasks that have an expiry, scored by it: the reaper ends those still waiting
-- past it (reap.lua).
local K_DEFERRED_EXPIRY = P .. 'deferred_expiry'
-- Tenants taking turns: per priority band its clock and each tenant's last place (fair()).
local K_FAIR = P .. 'fair'
-- A turn of weight w is 1/w of a place, rounded to 1/TURN_QUANTA: scores stay exact doubles
-- (bands reach 2^44, so 2^-9 is the finest step a score holds exactly).
local TURN_QUANTA = 512
-- Whether `fair` exists, as this run learned it (nil: not asked yet; submitted_before asks
-- with the task keys it looks for, fair().on() on its own).
local fair_exists
-- A queued task's score is its priority's band plus its submit number (`seq`): within a
-- priority, the first submitted runs first.
local PRIORITY_BAND = 1099511627776
local WAKE_BURST = 64
local DEFAULT_MAX_ATTEMPTS = 3
local DEFAULT_RESULT_TTL = 86400
local EVENT_CAP = 10000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When Redis is full (maxmemory reached, maxmemory-policy noeviction) it refuses a script's
-- first write if that command may grow memory, and then nothing of the script has run; once a
-- script has written, the rest of it runs. So a script's first write decides: the scripts that
-- take runs in progress to their end (heartbeat, cancel, reap, requeue) call `run_when_full`
-- first, a write that cannot grow memory, and go on; a claim calls `refuse_when_full` first,
-- one that may, so no run starts on a full Redis (each adds its result). Both name a key that
-- never exists, and change nothing.
local function run_when_full() redis.call('EXPIRE', P .. 'full', 1) end
local function refuse_when_full() redis.call('SET', P .. 'full', '', 'XX') end

local function task_key(id) return P .. 't:' .. id end
local function owner_key(worker) return P .. 'owner:' .. worker end
local function worker_key(worker) return P .. 'w:' .. worker end
local function events_key(id) return P .. 'ev:' .. id end
local function checkpoint_key(id) return P .. 'cp:' .. id end
local function next_key(id) return P .. 'next:' .. id end
-- Of a task's comma-separated `after` ids (each counted once), those not finished yet, those
-- dead-lettered, those cancelled, the first that ended otherwise than succeeded (and how) and
-- the first that does not exist: what a submit (submit.lua) and a requeue that brings tasks
-- back (dead_letters.lua) decide on.
local function dependencies(after)
  local open, dead, ended_cancelled, failed, how, missing = {}, {}, {}, nil, nil, nil
  local seen = {}
  for parent in string.gmatch(after, '[^,]+') do
    if not seen[parent] then
      seen[parent] = true
      local state = redis.call('HGET', task_key(parent), 'state')
      if not state then
        missing = missing or parent
      elseif state == 'dead' or state == 'cancelled' then
        if not failed then failed, how = parent, state end
        if state == 'dead' then
          dead[#dead + 1] = parent
        else
          ended_cancelled[#ended_cancelled + 1] = parent
        end
      elseif state ~= 'succeeded' then
        open[#open + 1] = parent
      end
    end
  end
  return {open = open, dead = dead, ended_cancelled = ended_cancelled, failed = failed,
    how = how}, missing
end
-- The error of a task ended because a task it runs after ended otherwise than succeeded
-- (`how`: dead, cancelled or expired); dead_letters.lua recognises it by CUT_OFF.
local CUT_OFF = 'cancelled: the task '
local function cut_off(id, how) return CUT_OFF .. id .. ' it runs after ended ' .. how end
-- A deferred task leaves the deferred set (and, when it has an expiry, the reaper's list).
local function undefer(id, expires)
  redis.call('ZREM', K_DEFERRED, id)
  if expires then redis.call('ZREM', K_DEFERRED_EXPIRY, id) end
end

-- A submit can reach Redis twice: its connection was lost after Redis ran it and the client
-- sent it again, or a failover carried its write to the new primary before the client sent
-- it there. Of `ids`, those that already name a task (as a set): a submit leaves them as they
-- are, since a worker may hold one or it may have finished. One EXISTS for all of them and
-- `fair` (whether the queue has tenants: fair_exists); one per task only when some exist.
local function submitted_before(ids)
  local keys, found = {K_FAIR}, {}
  for i = 1, #ids do keys[i + 1] = task_key(ids[i]) end
  local existing = redis.call('EXISTS', unpack(keys))
  fair_exists = existing > 0 and redis.call('EXISTS', K_FAIR) == 1
  if fair_exists then existing = existing - 1 end
  if existing == 0 then return found end
  for i = 1, #ids do
    if redis.call('EXISTS', keys[i + 1]) == 1 then found[ids[i]] = true end
  end
  return found
end

-- Queue-wide defaults, read at most once per script run (a reap may touch many tasks).
local config_max_attempts, config_result_ttl

-- A task's attempt limit from its own 'max' field (already read by the caller), else the
-- queue's default (also for a field that is not a number: written behind the protocol's back).
local function max_attempts(own)
  local limit = tonumber(own)
  if limit then return limit end
  if not config_max_attempts then
    config_max_attempts = tonumber(
      redis.call('HGET', K_CONFIG, 'max_attempts') or DEFAULT_MAX_ATTEMPTS)
  end
  return config_max_attempts
end

local function result_ttl()
  if not config_result_ttl then
    config_result_ttl = tonumber(redis.call('HGET', K_CONFIG, 'result_ttl') or DEFAULT_RESULT_TTL)
  end
  return config_result_ttl
end

-- The operator asked this worker instance, or its whole pod, to stop claiming.
local function drain_requested(worker, pod)
  local f = redis.call('HMGET', K_DRAIN, pod, worker)
  return f[1] ~= false or f[2] ~= false
end

-- Someone follows finishes on the 'done' channel (a producer waiting for a result sets the
-- flag, with a TTL, before it reads the task): a finish is published only then.
local listening
local function announce(id)
  if listening == nil then listening = redis.call('EXISTS', K_LISTENING) == 1 end
  if not listening then return end
  -- sharded pub/sub (Redis 7+): on a cluster the message stays on the queue's shard
  if redis.REDIS_VERSION_NUM then
    redis.call('SPUBLISH', K_DONE, id)
  else
    redis.call('PUBLISH', K_DONE, id)
  end
end

-- Anything was ever submitted to the queue, or a worker serves it (or served it: its config
-- stays). The submit sequence is created by the first submit and never deleted by the
-- protocol; the stats hash (counted by earlier versions' submits too) by the first outcome.
local function queue_used()
  return redis.call('EXISTS', K_SEQ, K_STATS, K_CONFIG, K_WORKERS, K_QUEUED, K_DELAYED,
    K_LEASES, K_DEAD) > 0 and 1 or 0
end

-- Wake-up signals for idle workers blocked on the list. A signal already waiting will wake
-- a worker whose claim takes everything there is (and passes a signal on when it leaves
-- tasks behind, see claim.lua), so only an empty list gets signals: one per new task, up to
-- WAKE_BURST in one push.
local function wake(n)
  if redis.call('LLEN', K_WAKE) == 0 then
    local signals = {}
    for i = 1, math.min(n, WAKE_BURST) do signals[i] = '1' end
    redis.call('RPUSH', K_WAKE, unpack(signals))
  end
end

-- Tenants take turns (docs/protocol.md): a task enters the queue at its band's clock (the
-- turn being served) or right after its tenant's last place, whichever is later (start-time
-- fair queuing), so that tenants with tasks waiting take one turn each. `fair` holds, per
-- band, the clock (member '<band>') and each tenant's last place (member '<band>:<tenant>';
-- the tasks without a tenant take turns as one, '<band>:', once the queue has tenants). The
-- clock is the head of the band's queued tasks as last seen, or the submit counter when
-- nothing is queued, and never moves back: a task handed back at its old place (a requeue,
-- a retry) first makes the clock note the head it goes ahead of (`hold`), so it makes no
-- room for newer tasks ahead of the rest. A place a turn or more before the clock is as good
-- as none: the reaper drops those (reap.lua). A place may pass the submit counter (a burst placed in an
-- empty band): cancel_waiting.lua reads each band's highest place here.
-- A tenant with a weight (`weights`, set from spec.tenants) advances its place by 1/weight per
-- task instead of 1, so that it takes that many turns to one of a tenant of weight 1.
-- The functions are made once per run that needs them, most runs never do: `fair()`.
local fair_made
local function fair()
  if fair_made then return fair_made end
  local bands, dirty, steps, f = {}, {}, {}, {}
  function f.on()
    if fair_exists == nil then fair_exists = redis.call('EXISTS', K_FAIR) == 1 end
    return fair_exists
  end
  -- `own`: the place by submit number of the first task a submit places in the band (an
  -- empty band's clock starts there, so a submit's places stay by its submit numbers)
  local function band_state(band, own)
    local state = bands[band]
    if state then return state end
    local lo, name = band * PRIORITY_BAND, tostring(band)
    local stored = tonumber(redis.call('ZSCORE', K_FAIR, name))
    local first = redis.call('ZRANGEBYSCORE', K_QUEUED, lo, lo + PRIORITY_BAND - 1,
      'WITHSCORES', 'LIMIT', 0, 1)
    local counter = own or lo + tonumber(redis.call('GET', K_SEQ) or '0')
    local clock = math.max(stored or lo, tonumber(first[2]) or counter)
    if not stored then
      -- the band's first tenant: the tasks without a tenant queued so far keep their places
      -- (by submit number), and the next one goes after them
      dirty[name .. ':'] = own and own - 1 or counter
    end
    if clock ~= stored then dirty[name] = clock end
    fair_exists = true
    state = {lo = lo, clock = clock, last = {}}
    bands[band] = state
    return state
  end
  -- How far a task of `who` moves its tenant's place: 1/weight (tasks without a tenant: 1).
  local function step(who)
    local known = steps[who]
    if known then return known end
    -- `weights`: tenant -> '1'..'100', written by the operator from spec.tenants; any other
    -- value is none, as the operator reads it (the key is made here, not at the top: most
    -- runs of the scripts that include fair() never need it)
    local text = who ~= '' and redis.call('HGET', P .. 'weights', who)
    local weight = text and (string.match(text, '^[1-9]%d?$') or text == '100') and tonumber(text)
    known = 1
    if weight and weight > 1 then
      known = math.max(1, math.floor(TURN_QUANTA / weight + 0.5)) / TURN_QUANTA
    end
    steps[who] = known
    return known
  end
  function f.place(band, who, own)
    local state = band_state(band, own)
    local member = band .. ':' .. who
    local last = state.last[member] or dirty[member]
    if not last then last = tonumber(redis.call('ZSCORE', K_FAIR, member)) or state.lo end
    local place = math.max(state.clock, last + step(who))
    state.last[member] = place
    dirty[member] = place
    return place
  end
  -- Writes the clocks and places decided (after the run's last place).
  function f.flush()
    local scored = {}
    for member, place in pairs(dirty) do
      scored[#scored + 1] = place
      scored[#scored + 1] = member
    end
    if #scored > 0 then redis.call('ZADD', K_FAIR, unpack(scored)) end
    dirty = {}
  end
  -- The score a task that never ran goes into the queue with (a delayed task come due, a
  -- deferred one released): a tenant's, or any once the queue has tenants, takes its turn
  -- now (its submit number kept as `seq`); others keep their place by submit number.
  function f.entry(tk, score, tenant, seq)
    if not tenant and not f.on() then return score end
    local place = f.place(math.floor(tonumber(score) / PRIORITY_BAND), tenant or '')
    redis.call('HSET', tk, 'score', place, 'seq', seq or (tonumber(score) % PRIORITY_BAND))
    return place
  end
  -- Before a task goes back in at an old place: the clock notes the head it goes ahead of.
  function f.hold(score)
    if not f.on() then return end
    band_state(math.floor(tonumber(score) / PRIORITY_BAND))
    f.flush()
  end
  -- Drops the places a whole turn or more behind their band's clock (at most `most`): a
  -- step is at most one turn, so such a place puts its tenant's next task at the clock, as no
  -- place does (one less than a turn behind a clock between whole places still counts).
  function f.prune(most)
    if not f.on() then return end
    for band = 0, 9 do
      if redis.call('ZSCORE', K_FAIR, tostring(band)) then
        local state = band_state(band)
        local gone = redis.call('ZRANGEBYSCORE', K_FAIR, state.lo,
          string.format('%.17g', state.clock - 1),
          'LIMIT', 0, most)
        if #gone > 0 then redis.call('ZREM', K_FAIR, unpack(gone)) end
        most = most - #gone
        if most <= 0 then break end
      end
    end
    f.flush()
  end
  fair_made = f
  return f
end

-- Caps on a tenant's runs at once: `caps` maps a tenant to the most of its tasks that may run
-- at once, and '' (no tenant's name) to the cap of every tenant not listed; tasks without a
-- tenant have none. The operator writes it from spec.tenants and spec.tenantMaxRunning.
-- While a queue has caps, `runs:<tenant>` holds the ids of the tenant's tasks its claims
-- started (claim.lua adds them, run_ended removes them; set_caps.lua makes them the runs in
-- progress when the queue gets caps, and drops them when it has none left), and a claim that
-- meets a task of a tenant with as many runs as its cap parks it: the task leaves `queued` for
-- `parked:<tenant>`, at the same score, and the tenant joins the set `parked`. A parked task
-- takes no place a claim has to pass over, and does not hold the band's clock back; it
-- goes back to `queued` at its place when its tenant has room again: a run of the tenant
-- ended (run_ended), its cap was raised (set_caps.lua) or the reaper found room that a run's
-- end did not report (reap.lua).
local K_CAPS = P .. 'caps'
local K_PARKED = P .. 'parked'
-- The parked tasks that have an expiry, scored by it: the reaper ends those past it, so a
-- task does not outlive its expiry parked behind its tenant's long runs (reap.lua).
local K_PARKED_EXPIRY = P .. 'parked_expiry'
-- Whether `caps` exists, as this run learned it (nil: not asked yet).
local caps_exist
local function caps_on()
  if caps_exist == nil then caps_exist = redis.call('EXISTS', K_CAPS) == 1 end
  return caps_exist
end

local function runs_key(tenant) return P .. 'runs:' .. tenant end
local function parked_key(tenant) return P .. 'parked:' .. tenant end

-- The tenants with tasks parked; `parked` read only when it exists, so that a reader under a
-- producer's rules of before caps (no SMEMBERS) reads a queue without caps as before.
local function parked_tenants()
  if redis.call('EXISTS', K_PARKED) == 0 then return {} end
  return redis.call('SMEMBERS', K_PARKED)
end

-- The queued tasks from the `first` (0-based), at most `want`: the queue's own in claim
-- order, then those parked for their tenant's cap, each tenant's in their order, tenants by
-- name (as the server sorts strings; the sort only when the page reaches past the queue),
-- then the delayed tasks already due, by due time (the next claim moves them into the queue;
-- the figures count them as queued). Returns how many queued tasks there are and, per task
-- picked, its id and whether it is parked.
local function queued_pick(first, want)
  local size = redis.call('ZCARD', K_QUEUED)
  local ids, parked = {}, {}
  if want > 0 and first < size then
    ids = redis.call('ZRANGE', K_QUEUED, first, first + want - 1)
    for i = 1, #ids do parked[i] = false end
    want = want - #ids
  end
  first = math.max(0, first - size)
  local tenants = parked_tenants()
  if want > 0 then table.sort(tenants) end
  for _, tenant in ipairs(tenants) do
    local key = parked_key(tenant)
    local n = redis.call('ZCARD', key)
    size = size + n
    if want > 0 and first < n then
      local page = redis.call('ZRANGE', key, first, first + want - 1)
      for _, id in ipairs(page) do
        ids[#ids + 1] = id
        parked[#parked + 1] = true
      end
      want = want - #page
    end
    first = math.max(0, first - n)
  end
  local now = now_ms()
  local due = redis.call('ZCOUNT', K_DELAYED, '-inf', now)
  size = size + due
  if want > 0 and first < due then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', first,
        want)) do
      ids[#ids + 1] = id
      parked[#parked + 1] = false
    end
  end
  return size, ids, parked
end

-- A tenant's cap on runs at once, nil for none: its own, else the default; a value that is
-- no whole number from 1 to 1000 (written by hand) is none, as TaskQueue.tenant_caps reads it.
local function tenant_cap(tenant)
  local c = redis.call('HMGET', K_CAPS, tenant, '')
  for i = 1, 2 do
    local cap = c[i] and string.match(c[i], '^[1-9]%d?%d?%d?$') and tonumber(c[i])
    if cap and cap <= 1000 then return cap end
  end
  return nil
end

-- How many runs `tenant` has: the ids of `runs:<tenant>` that hold a lease (those without
-- one, whose run ended on a path that did not say or while the queue had no caps, are
-- dropped), so that a count never holds a tenant back for runs that are over.
local function tenant_runs(tenant)
  local rk = runs_key(tenant)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', rk)) do
    if redis.call('ZSCORE', K_LEASES, id) then
      n = n + 1
    else
      redis.call('SREM', rk, id)
    end
  end
  return n
end

-- Moves up to `room` (nil: all) of the tenant's parked tasks, the first first, back to the
-- queue at their places, and wakes as many idle workers; at most UNPARK_MOST a call (the
-- next run's end, claim or reap goes on). A task past its expiry goes back without taking
-- room: the claim or the reaper that reaches it ends it.
local UNPARK_MOST = 5000
local function unpark(tenant, room)
  local pk = parked_key(tenant)
  local now = now_ms()
  local moved, looked = 0, 0
  while (not room or moved < room) and looked < UNPARK_MOST do
    local want = math.min(room and room - moved or 1000, 1000, UNPARK_MOST - looked)
    local popped = redis.call('ZPOPMIN', pk, want)
    if #popped == 0 then break end
    local back = {}
    for i = 1, #popped, 2 do
      fair().hold(popped[i + 1])
      back[#back + 1] = popped[i + 1]
      back[#back + 1] = popped[i]
      local expires = tonumber(redis.call('HGET', task_key(popped[i]), 'expires'))
      if expires then redis.call('ZREM', K_PARKED_EXPIRY, popped[i]) end
      if not (expires and now >= expires) then moved = moved + 1 end
      looked = looked + 1
    end
    redis.call('ZADD', K_QUEUED, unpack(back))
  end
  if redis.call('EXISTS', pk) == 0 then redis.call('SREM', K_PARKED, tenant) end
  if looked > 0 then wake(looked) end
  return looked
end

-- Gives each parked tenant that has room under its cap (or no cap any more) as many of its
-- parked tasks back as it has room for; forgets the tenants with none parked any more.
local function unpark_all()
  for _, tenant in ipairs(redis.call('SMEMBERS', K_PARKED)) do
    if redis.call('EXISTS', parked_key(tenant)) == 0 then
      redis.call('SREM', K_PARKED, tenant)
    else
      local cap = tenant_cap(tenant)
      local room = cap and cap - tenant_runs(tenant)
      if not room or room > 0 then unpark(tenant, room) end
    end
  end
end

-- The task `id` ended, waits for a retry or goes back to the queue (its holder lost or
-- draining): its tenant's count of runs drops, and when its tenant has room again, its first
-- parked task goes back to the queue, so that a task handed back does not pass the tenant's
-- parked tasks of a higher priority. Only a run counts: the tasks a producer's cancel ends
-- never ran, and a producer may not write `runs:`.
local function run_ended(id, tk)
  if not caps_on() then return end
  local t = redis.call('HMGET', tk, 'tenant', 'state')
  local tenant = t[1]
  if not tenant or t[2] ~= 'running' then return end
  if redis.call('SREM', runs_key(tenant), id) == 1
      and redis.call('EXISTS', parked_key(tenant)) == 1 then
    local cap = tenant_cap(tenant)
    local room = cap and cap - tenant_runs(tenant)
    if not room or room > 0 then unpark(tenant, room) end
  end
end

-- A deferred task out of the deferred set whose parents have all succeeded: to the queue (its
-- tenant's turn taken now), or to the delayed tasks while its own delay runs (`due`).
local function release_deferred(id, tk, score, due, tenant, seq, now)
  due = tonumber(due)
  if due and due > now then
    redis.call('HSET', tk, 'state', 'delayed')
    redis.call('ZADD', K_DELAYED, due, id)
  else
    redis.call('HSET', tk, 'state', 'queued', 'due', now)
    redis.call('ZADD', K_QUEUED, fair().entry(tk, score, tenant, seq), id)
    wake(1)
  end
end

-- A task reached a final state (succeeded, dead, cancelled): keep it for the result TTL
-- (dead tasks stay until purged) and tell waiting producers. `f` holds the task's 'ev' and
-- 'cp' flags (read by the caller) and may hold 'dn' (read here when it does not); `extra`
-- more field/value pairs for the same HSET; `count` false when the caller counts the outcome
-- in the stats itself (a batch).
-- A task's event stream (when it has one) ends with a 'final' event written in the same step,
-- so a follower knows it has seen everything; the stream lives as long as the task.
-- The tasks submitted to run after it (submit.lua) learn the outcome in the same step: when it
-- succeeded, each one whose last dependency it was goes to the queue (or the delayed set, until
-- its own delay from its submit has passed); otherwise they end cancelled, and theirs in turn.
local function finished(id, tk, state, now, f, extra, count)
  -- the task, then each one its end cancels: a list, not recursion, since a chain of tasks
  -- may be longer than Lua's call depth
  local ending, listed = {{id, tk, state, f, extra, count}}, {}
  while #ending > 0 do
    local e = table.remove(ending)
    id, tk, state, f, extra, count = e[1], e[2], e[3], e[4], e[5], e[6]
    run_ended(id, tk)
    if extra then
      redis.call('HSET', tk, 'state', state, 'finished', now, unpack(extra))
    else
      redis.call('HSET', tk, 'state', state, 'finished', now)
    end
    local ek = events_key(id)
    local has_events = f.ev ~= false and f.ev ~= nil
    if has_events then
      local r = redis.call('HMGET', tk, 'attempts', 'error')
      local data = {state = state}
      if state ~= 'succeeded' and r[2] then data.error = string.sub(r[2], 1, 500) end
      redis.call('XADD', ek, 'MAXLEN', '~', EVENT_CAP, '*', 'kind', 'final',
        'data', cjson.encode(data), 'attempt', r[1] or '0')
    end
    -- a dead task keeps its checkpoint: requeued from the dead letters, it resumes from it
    if state == 'dead' then
      redis.call('ZADD', K_DEAD, now, id)
      redis.call('PERSIST', tk)
      if has_events then redis.call('PERSIST', ek) end
    else
      redis.call('EXPIRE', tk, result_ttl())
      if has_events then redis.call('EXPIRE', ek, result_ttl()) end
      if f.cp ~= false and f.cp ~= nil then
        redis.call('EXPIRE', checkpoint_key(id), result_ttl())
      end
    end
    if count ~= false then redis.call('HINCRBY', K_STATS, state, 1) end
    announce(id)
    local dn = f.dn
    if dn == nil then dn = redis.call('HGET', tk, 'dn') end
    local waiting = dn and redis.call('GET', next_key(id))
    -- kept while the task is: a dead one may be requeued, and tasks submitted after it then
    if dn and state ~= 'dead' then redis.call('EXPIRE', next_key(id), result_ttl()) end
    local how = state
    if extra and extra[1] == 'error' and string.sub(extra[2], 1, 8) == 'expired:' then
      how = 'expired'
    end
    local seen = {}
    for child in string.gmatch(waiting or '', '[^,]+') do
      local ck = task_key(child)
      local c = {}
      -- a task listed twice (its submit sent again once its record had gone) counts once
      if not seen[child] then
        seen[child] = true
        c = redis.call('HMGET', ck, 'state', 'score', 'due', 'ev', 'cp', 'dn', 'expires',
          'tenant', 'seq')
      end
      if c[1] == 'deferred' and not listed[child] then
        if state ~= 'succeeded' then
          listed[child] = true
          undefer(child, c[7])
          ending[#ending + 1] = {child, ck, 'cancelled', {ev = c[4], cp = c[5], dn = c[6]},
            {'error', cut_off(id, how)}}
        elseif redis.call('HINCRBY', ck, 'waits', -1) <= 0 then
          undefer(child, c[7])
          release_deferred(child, ck, c[2], c[3], c[8], c[9], now)
        end
      end
    end
  end
  if fair_made then fair_made.flush() end
end

-- `call`: the id of the producer's cancel call, kept so the same call sent again is known.
local function cancelled(id, tk, now, f, call)
  local extra = {'error', 'cancelled'}
  if call then extra[3], extra[4] = 'cancelcall', call end
  finished(id, tk, 'cancelled', now, f, extra)
end

-- No run of the task may start any more: its expiry (ms) has passed, or will before it could
-- start again. It ends cancelled, its error saying what did not start in time (`what`, then
-- `tail`), counted apart as expired.
local function expired(id, tk, now, f, expires, created, what, tail)
  local within = (tonumber(expires) - (tonumber(created) or 0)) / 1000
  finished(id, tk, 'cancelled', now, f,
    {'error', 'expired: ' .. what .. ' within ' .. within .. ' s of its submit' .. tail})
  redis.call('HINCRBY', K_STATS, 'expired', 1)
end

-- Back to the queue at its original place (score), with the reason it left its holder; it
-- is ready again from `now` (its 'due': a run's wait is counted from it).
local function requeue(id, tk, score, err, now)
  run_ended(id, tk)
  fair().hold(score)
  redis.call('HSET', tk, 'state', 'queued', 'error', err, 'due', now)
  redis.call('ZADD', K_QUEUED, score, id)
  redis.call('HINCRBY', K_STATS, 'requeued', 1)
  wake(1)
end

-- Return a running task whose holder is gone. The lost run counts as an attempt, so a task
-- that keeps killing its workers ends in the dead-letter queue. Its error names the holder
-- (pod/instance), so a person can follow the lost run to its pod's logs.
-- Returns 1 requeued, 2 dead-lettered, 3 cancelled, 0 nothing to do (not running any more).
local function requeue_one(id, reason, now)
  local tk = task_key(id)
  redis.call('ZREM', K_LEASES, id)
  local f = redis.call('HMGET', tk, 'state', 'owner', 'attempts', 'score', 'cancel', 'max',
    'ev', 'cp')
  if f[2] then redis.call('SREM', owner_key(f[2]), id) end
  if f[1] ~= 'running' then return 0 end
  redis.call('HDEL', tk, 'owner', 'token')
  if f[2] then reason = reason .. ', held by ' .. f[2] end
  local fl = {ev = f[7], cp = f[8]}
  if f[5] == '1' then
    cancelled(id, tk, now, fl)
    return 3
  end
  local attempts = tonumber(f[3] or '0')
  local limit = max_attempts(f[6])
  if attempts >= limit then
    finished(id, tk, 'dead', now, fl,
      {'error', reason .. ' (attempt ' .. attempts .. ' of ' .. limit .. ')'})
    return 2
  end
  requeue(id, tk, f[4], reason, now)
  return 1
end

-- Requeue every task a worker instance holds and forget the instance.
local function requeue_worker(worker, reason, now, counts)
  local ids = redis.call('SMEMBERS', owner_key(worker))
  for _, id in ipairs(ids) do
    local r = requeue_one(id, reason, now)
    if r > 0 then counts[r] = counts[r] + 1 end
  end
  redis.call('DEL', owner_key(worker))
  redis.call('ZREM', K_WORKERS, worker)
  redis.call('HSET', worker_key(worker), 'state', 'gone', 'in_flight', 0)
  redis.call('EXPIRE', worker_key(worker), 3600)
end

-- The first `bytes` bytes of a UTF-8 string, ending on a character boundary (what a page
-- shows of a field too big to send whole).
local function text_prefix(text, bytes)
  if #text <= bytes then return text end
  local n = bytes
  while n > 0 do
    local b = string.byte(text, n + 1)
    if b < 128 or b >= 192 then break end
    n = n - 1
  end
  return string.sub(text, 1, n)
end
