-- Shared rate limits: a GCRA (virtual-scheduling token bucket) with reservations.
--
-- Keys: every key of a limit lives under ARGV[1] = "ap:{rl:<name>}:" and so shares the hash tag
-- {rl:<name>}: one Redis Cluster slot per limit, whatever queue or pool uses it. KEYS[1] is the
-- limit's state hash, which routes the script to that slot. The script touches nothing else.
--   <prefix>config     hash: rpm, tpm, burst (seconds), conc (most calls at once, '' for
--                      none), owner, seen (ms), since (ms: declared afresh, see
--                      slots.lua)                                              the declaration
--   <prefix>held, line, seen, ticket   the slots of `conc` (agentpool/lua/slots.lua)
--   <prefix>state      hash: tat_r, tat_t (µs), tail (the grant time of the last reservation
--                      handed out, until given back or a throttle), base, recover_at,
--                      pause_until (µs), counters
--   <prefix>waiting    zset: caller -> time of its latest future grant (µs)
--   <prefix>call:<id>  string (1 min TTL): what the acquire, release or throttle with this
--                      call id did, so that the same call sent again (its reply lost with its
--                      connection) gets the same grants, gives nothing back a second time, or
--                      counts one 429
--
-- Each dimension (requests, tokens) is a bucket of `rate * burst / 60` units refilled at `rate`
-- per minute, stored as its theoretical arrival time `tat` (the bucket is full when tat <= now;
-- it holds `cap - (tat - t) / T` units at t, T = µs per unit). A grant of `cost` units goes at
-- the first time both buckets hold it (a cost larger than a bucket waits for a full bucket and
-- leaves a debt), and moves each tat by cost * T: any window of W seconds grants at most
-- cap + rate * W units. The caller is told how long to wait and sleeps; no polling.
--
-- AIMD after a provider's 429 (`throttle`): every grant waits for the pause; the effective rate
-- is declared * factor, the factor halves (at most once per pause, not below MIN_FACTOR) and,
-- once the pause is over, rises by STEP every INTERVAL until it is back to 1.
--
-- Ops (ARGV[2]):
--   acquire call caller n (requests tokens) x n [rpm tpm burst conc]
--                       -> {factor_ppm, wait_us 1, grant_us 1, ..., wait_us n, grant_us n}
--                          (wait_us -1 or -2 and the rate for a call asking more requests or
--                          tokens than the declared rate gives in a minute: refused), or
--                          {-1} when the limit is not declared (the optional rates declare it
--                          when nothing is, so an emptied Redis heals itself). The n grants
--                          are handed out in order: a client batches the calls that arrived
--                          while its previous round trip was on the wire.
--   release call requests tokens grant_us           -> 1 when the unspent grant was given back
--                       (only the last one handed out is: see below)
--   throttle call retry_after_us                    -> {pause_us, factor_ppm, decreased}
--   declare rpm tpm burst conc owner stale_ms       -> {outcome, owner, rpm, tpm, burst, conc}
--   read                                            -> flat list of fields (see the client)

local P, op = ARGV[1], ARGV[2]
local K_CONFIG, K_STATE, K_WAITING = P .. 'config', P .. 'state', P .. 'waiting'
local DECREASE, MIN_FACTOR, STEP, INTERVAL_US = 0.5, 0.1, 0.1, 6e6
local CALL_TTL_MS = 60000

-- While the limit's slot moves to another primary (a reshard), its keys are split between the
-- two, and a call sent on to the new one (ASK) would see part of them (and write a declaration
-- there that stops the move: MIGRATE refuses a key that exists). A command on two keys that
-- never exist is refused on either primary while the slot moves, before anything ran; the
-- client sends the call again (agentpool/slots.py, SlotMoves).
redis.call('EXISTS', P .. 'full', P .. 'moving')

local function call_key(id) return P .. 'call:' .. id end

-- Grants serve runs in progress, so they go on when Redis is full: a first write that cannot
-- grow memory (EXPIRE of a key that never exists) lets the rest of the script write then (see
-- run_when_full in common.lua).
if op == 'acquire' or op == 'release' or op == 'throttle' then
  redis.call('EXPIRE', P .. 'full', 1)
end

-- What the call with this id answered, if it ran already (then sent again), else nil.
local function answered(call)
  local done = redis.call('GET', call_key(call))
  if done then return cmsgpack.unpack(done) end
end

local function remember(call, out)
  redis.call('SET', call_key(call), cmsgpack.pack(out), 'PX', CALL_TTL_MS)
  return out
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1e6 + tonumber(t[2])
end

local function num(s) return string.format('%.17g', s) end

-- t + d (d >= 0) rounded up: a tat is microseconds since the epoch (about 1.8e15), where
-- doubles lie 0.25 us apart, so a cost below that (a rate of millions a minute) would round
-- to nothing. A grant may cost a quarter of a microsecond more; never less.
local function later(t, d)
  local sum = t + d
  if sum - t < d then
    local _, e = math.frexp(sum)
    sum = sum + 2 ^ (e - 53)
  end
  return sum
end

-- The factor in force at `now`: `base` until `recover_at`, then STEP more every INTERVAL.
local function factor_at(now, base, recover_at)
  if base >= 1 then return 1 end
  if now < recover_at then return base end
  return math.min(1, base + STEP * math.floor((now - recover_at) / INTERVAL_US))
end

local function dims(cfg, f, burst)
  local out = {}
  local rates = {cfg[1], cfg[2]}
  for i = 1, 2 do
    local rate = tonumber(rates[i])
    if rate and rate > 0 then
      local per = 60e6 / (rate * f)
      out[i] = {per = per, cap = rate * burst / 60, rate = rate}
    end
  end
  return out
end

-- Which dimension (1 requests, 2 tokens) a call asks more of than its declared rate gives in a
-- minute, if any: such a call would leave every caller of the limit a debt of more than a
-- minute to wait out (a token count of a whole payload's bytes, say), so it is refused.
local function too_large(d, costs)
  for i = 1, 2 do
    if d[i] and costs[i] > d[i].rate then return i end
  end
end

local function load_state(now)
  local s = redis.call('HMGET', K_STATE, 'tat_r', 'tat_t', 'base', 'recover_at', 'pause_until')
  local base, recover_at = tonumber(s[3]) or 1, tonumber(s[4]) or 0
  return {tonumber(s[1]) or 0, tonumber(s[2]) or 0}, factor_at(now, base, recover_at),
    tonumber(s[5]) or 0
end

if op == 'acquire' then
  local call, caller, count = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local done = answered(call)
  if done then return done end
  local cfg = redis.call('HMGET', K_CONFIG, 'rpm', 'tpm', 'burst')
  local declare = 6 + 2 * count
  if not cfg[3] then
    if not ARGV[declare + 2] then return {-1} end
    -- `since`: slots.lua hands out no slot until the holders that survived were counted
    redis.call('HSET', K_CONFIG, 'rpm', ARGV[declare], 'tpm', ARGV[declare + 1],
      'burst', ARGV[declare + 2], 'conc', ARGV[declare + 3] or '', 'owner', '', 'seen', 0,
      'since', math.floor(now_us() / 1000))
    cfg = {ARGV[declare], ARGV[declare + 1], ARGV[declare + 2]}
  end
  local now = now_us()
  local tats, f, pause_until = load_state(now)
  local d = dims(cfg, f, tonumber(cfg[3]))
  local out = {math.floor(f * 1e6)}
  local latest, waited, tokens, granted, tail = now, 0, 0, count, nil
  for k = 0, count - 1 do
    local costs = {tonumber(ARGV[6 + 2 * k]), tonumber(ARGV[7 + 2 * k])}
    local refused = too_large(d, costs)
    if refused then
      out[#out + 1] = -refused
      out[#out + 1] = d[refused].rate
      granted = granted - 1
    else
      local grant = math.max(now, pause_until)
      for i = 1, 2 do
        if d[i] and costs[i] > 0 then
          grant = math.max(grant, tats[i] - math.max(0, d[i].cap - costs[i]) * d[i].per)
        end
      end
      for i = 1, 2 do
        if d[i] and costs[i] > 0 then
          tats[i] = later(math.max(tats[i], grant), costs[i] * d[i].per)
        end
      end
      out[#out + 1] = math.ceil(grant - now)
      out[#out + 1] = math.floor(grant)
      tail = math.floor(grant)
      latest = math.max(latest, grant)
      waited = waited + (grant - now)
      tokens = tokens + costs[2]
    end
  end
  if tail then
    redis.call('HSET', K_STATE, 'tat_r', num(tats[1]), 'tat_t', num(tats[2]), 'tail', num(tail))
  else
    redis.call('HSET', K_STATE, 'tat_r', num(tats[1]), 'tat_t', num(tats[2]))
  end
  redis.call('HINCRBY', K_STATE, 'grants', granted)
  if tokens > 0 then redis.call('HINCRBY', K_STATE, 'tokens', tokens) end
  if latest > now then
    redis.call('ZREMRANGEBYSCORE', K_WAITING, '-inf', now)
    redis.call('ZADD', K_WAITING, latest, caller)
    redis.call('HINCRBY', K_STATE, 'waited_us', math.ceil(waited))
  end
  return remember(call, out)
end

if op == 'release' then
  local call = ARGV[3]
  local costs = {tonumber(ARGV[4]), tonumber(ARGV[5])}
  local grant = tonumber(ARGV[6])
  local now = now_us()
  if now >= grant then return 0 end
  local cfg = redis.call('HMGET', K_CONFIG, 'rpm', 'tpm', 'burst')
  if not cfg[3] then return 0 end
  if redis.call('EXISTS', call_key(call)) == 1 then return 1 end  -- given back already
  -- Only the last reservation handed out gives its time back: one from the middle of the line
  -- has later ones granted after it, and moving the tat back would grant its time again on
  -- top of theirs. It stays spent (its time passes unused).
  if tonumber(redis.call('HGET', K_STATE, 'tail')) ~= grant then return 0 end
  redis.call('SET', call_key(call), '1', 'PX', CALL_TTL_MS)
  redis.call('HDEL', K_STATE, 'tail')
  local tats, f = load_state(now)
  local d = dims(cfg, f, tonumber(cfg[3]))
  for i = 1, 2 do
    if d[i] and costs[i] > 0 then
      tats[i] = math.max(now, tats[i] - costs[i] * d[i].per)
    end
  end
  redis.call('HSET', K_STATE, 'tat_r', num(tats[1]), 'tat_t', num(tats[2]))
  redis.call('HINCRBY', K_STATE, 'released', 1)
  return 1
end

if op == 'throttle' then
  local call, retry = ARGV[3], tonumber(ARGV[4])
  local done = answered(call)
  if done then return done end
  local now = now_us()
  local tats, f, pause_until = load_state(now)
  local decreased = 0
  local until_ = math.max(pause_until, now + retry)
  if now >= pause_until then
    f = math.max(MIN_FACTOR, f * DECREASE)
    decreased = 1
    redis.call('HSET', K_STATE, 'base', num(f))
  end
  redis.call('HSET', K_STATE, 'pause_until', num(until_), 'recover_at', num(until_),
    'last_throttle', num(now))
  redis.call('HINCRBY', K_STATE, 'throttles', 1)
  -- a reservation handed out before the 429 stays spent: given back, it would move the tat
  -- back from the empty bucket set below
  redis.call('HDEL', K_STATE, 'tail')
  local cfg = redis.call('HMGET', K_CONFIG, 'rpm', 'tpm', 'burst')
  if cfg[3] then
    -- the provider's budget is spent: the buckets start empty when the pause ends
    local d = dims(cfg, f, tonumber(cfg[3]))
    for i = 1, 2 do
      if d[i] then tats[i] = math.max(tats[i], until_ + d[i].cap * d[i].per) end
    end
    redis.call('HSET', K_STATE, 'tat_r', num(tats[1]), 'tat_t', num(tats[2]))
  end
  local out = {math.ceil(until_ - now), math.floor(f * 1e6), decreased}
  return remember(call, out)
end

if op == 'declare' then
  local rpm, tpm, burst, conc = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local owner, stale = ARGV[7], tonumber(ARGV[8])
  local now_ms = math.floor(now_us() / 1000)
  local c = redis.call('HMGET', K_CONFIG, 'rpm', 'tpm', 'burst', 'owner', 'seen', 'conc')
  c[6] = c[6] or ''
  local outcome
  if not c[3] then
    outcome = 'declared'
  elseif c[1] == rpm and c[2] == tpm and c[3] == burst and c[6] == conc then
    outcome = 'same'
    if c[4] ~= '' and c[4] ~= owner and now_ms - (tonumber(c[5]) or 0) < stale then
      return {outcome, c[4], c[1], c[2], c[3], c[6]}
    end
  elseif c[4] == '' or c[4] == owner or now_ms - (tonumber(c[5]) or 0) >= stale then
    outcome = 'updated'
  else
    return {'conflict', c[4], c[1], c[2], c[3], c[6]}
  end
  redis.call('HSET', K_CONFIG, 'rpm', rpm, 'tpm', tpm, 'burst', burst, 'conc', conc,
    'owner', owner, 'seen', now_ms)
  -- a declaration made afresh may follow a Redis that lost everything: slots.lua hands out
  -- no slot until the holders that survived were counted
  if outcome == 'declared' then redis.call('HSET', K_CONFIG, 'since', now_ms) end
  return {outcome, owner, rpm, tpm, burst, conc}
end

if op == 'read' then
  local now = now_us()
  local c = redis.call('HMGET', K_CONFIG, 'rpm', 'tpm', 'burst', 'owner', 'conc')
  local s = redis.call('HMGET', K_STATE, 'base', 'recover_at', 'pause_until', 'grants',
    'tokens', 'throttles', 'last_throttle', 'waited_us', 'released', 'holds')
  local f = factor_at(now, tonumber(s[1]) or 1, tonumber(s[2]) or 0)
  local waiting = redis.call('ZCOUNT', K_WAITING, '(' .. num(now), '+inf')
  local now_ms = math.floor(now / 1000)
  local held = redis.call('ZCOUNT', P .. 'held', '(' .. now_ms, '+inf')
  local in_line = redis.call('ZCOUNT', P .. 'seen', '(' .. now_ms, '+inf')
  return {c[1] or '', c[2] or '', c[3] or '', c[4] or '', num(f), num(now),
    s[3] or '0', s[4] or '0', s[5] or '0', s[6] or '0', s[7] or '', s[8] or '0', s[9] or '0',
    waiting, c[5] or '', held, in_line, s[10] or '0'}
end

return redis.error_reply('unknown rate limit op ' .. tostring(op))
