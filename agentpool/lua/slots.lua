-- The slots of a shared limit's `maxConcurrent`: at most `conc` calls in progress at once
-- (the declaration's conc field, see rate_limit.lua), handed out in the order they were asked
-- for, whichever process asked.
--
-- Keys under ARGV[1] = "ap:{rl:<name>}:" (one hash slot per limit; KEYS[1] is its config):
--   held    zset: holder -> when its hold lapses (ms, Redis's clock) unless renewed
--   line    zset: holder -> ticket, the order of asking
--   seen    zset: holder -> when its place in line lapses (ms) unless it asks again
--   ticket  string: the last ticket handed out
--   freed   channel: the holders a slot was handed to while they were not asking, so that
--           their processes ask at once instead of at their next poll
--   state   hash (rate_limit.lua's): `holds` counts the slots handed out
-- A process renews its holds every few seconds and asks again for its waiters several times
-- a second (agentpool/slots.py), so one that dies keeps a slot no longer than a hold lasts and
-- a place in line no longer than `grace`.
--
-- Ops (ARGV[2]); the times are the caller's (agentpool/slots.py), in ms:
--   poll hold grace quiet rpm tpm burst conc n held x n waiter...
--       -> {conc, lapsed flag per held holder, 0 per waiter that holds a slot and 1 per
--          waiter still in line}, or {-1}: the limit is not declared; {-2}: it is declared
--          without conc. A process sends its holds when they are due for renewal, and its
--          waiters when new, when told of their grant, or every second or so to keep their
--          places.
--       Renews the holds (one that lapsed is taken again and flagged: its process was frozen
--       longer than a hold lasts, or Redis lost it), puts each new waiter at the end of the
--       line, then hands the free slots to the head of the line. rpm..conc declare the limit
--       when nothing is declared (an emptied Redis heals itself); then no slot is handed out
--       for `quiet`, time enough for the holders that survived to renew and be counted.
--   leave hold grace quiet holder...
--       -> holds given back; the holders leave the line too, and the freed slots go to the
--          head of the line at once.
-- A slot handed to a waiter that is not in the call lasts `grace` until its process asks
-- again (then `hold`): a waiter that died does not keep it for a whole hold.
-- Both may be sent twice (a reply lost with its connection) with the same effect.

local P, op = ARGV[1], ARGV[2]
local K_CONFIG, K_STATE = P .. 'config', P .. 'state'
local K_HELD, K_LINE, K_SEEN, K_TICKET = P .. 'held', P .. 'line', P .. 'seen', P .. 'ticket'
local K_FREED = P .. 'freed'

-- While the limit's slot moves to another primary (a reshard), its keys are split between the
-- two, and a call sent on to the new one (ASK) would see part of them (and write a declaration
-- there that stops the move: MIGRATE refuses a key that exists). A command on two keys that
-- never exist is refused on either primary while the slot moves, before anything ran; the
-- client sends the call again (agentpool/slots.py, SlotMoves).
redis.call('EXISTS', P .. 'full', P .. 'moving')

-- Slots serve runs in progress, so they go on when Redis is full (run_when_full in
-- common.lua): a first write that cannot grow memory lets the rest of the script write.
redis.call('EXPIRE', P .. 'full', 1)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function sweep()
  redis.call('ZREMRANGEBYSCORE', K_HELD, '-inf', now)
  local gone = redis.call('ZRANGEBYSCORE', K_SEEN, '-inf', now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    redis.call('ZREM', K_SEEN, unpack(gone))
    redis.call('ZREM', K_LINE, unpack(gone))
  end
end

-- At most this many slots are handed out by one call (Lua unpacks at most about 8,000
-- values; the next call of any process hands out the rest).
local HAND_OUT_MOST = 1000

-- Hands the free slots to the head of the line; returns the set of holders served.
local function hand_out(cfg, asking)
  local served = {}
  if cfg.since and now < cfg.since + cfg.quiet then return served end
  local free = cfg.conc - redis.call('ZCARD', K_HELD)
  if free <= 0 then return served end
  local head = redis.call('ZRANGE', K_LINE, 0, math.min(free, HAND_OUT_MOST) - 1)
  if #head == 0 then return served end
  local absent = {}
  for _, holder in ipairs(head) do
    redis.call('ZADD', K_HELD, now + (asking[holder] and cfg.hold or cfg.grace), holder)
    if not asking[holder] then absent[#absent + 1] = holder end
    served[holder] = true
  end
  redis.call('ZREM', K_LINE, unpack(head))
  redis.call('ZREM', K_SEEN, unpack(head))
  redis.call('HINCRBY', K_STATE, 'holds', #head)
  if #absent > 0 then
    -- sharded pub/sub on Redis 7 (the message stays on the limit's shard); pcall: a user
    -- whose rules predate the channel still gets its slots, its processes poll for them
    local command = redis.REDIS_VERSION_NUM and 'SPUBLISH' or 'PUBLISH'
    redis.pcall(command, K_FREED, table.concat(absent, ' '))
  end
  return served
end

-- The declaration's cap and the caller's times; nil burst when nothing is declared.
local function settings()
  local c = redis.call('HMGET', K_CONFIG, 'burst', 'conc', 'since')
  return c[1], {conc = tonumber(c[2]), since = tonumber(c[3]), hold = tonumber(ARGV[3]),
    grace = tonumber(ARGV[4]), quiet = tonumber(ARGV[5])}
end

if op == 'poll' then
  local burst, cfg = settings()
  if not burst then
    if ARGV[8] == '' then return {-1} end
    redis.call('HSET', K_CONFIG, 'rpm', ARGV[6], 'tpm', ARGV[7], 'burst', ARGV[8],
      'conc', ARGV[9], 'owner', '', 'seen', 0, 'since', now)
    cfg.conc, cfg.since = tonumber(ARGV[9]), now
  end
  if not cfg.conc then return {-2} end
  sweep()
  local n = tonumber(ARGV[10])
  local out = {cfg.conc}
  for i = 11, 10 + n do
    out[#out + 1] = redis.call('ZADD', K_HELD, now + cfg.hold, ARGV[i])
  end
  local waiters, asking, holds = {}, {}, {}
  for i = 11 + n, #ARGV do
    local holder = ARGV[i]
    waiters[#waiters + 1] = holder
    asking[holder] = true
    if redis.call('ZSCORE', K_HELD, holder) then
      redis.call('ZADD', K_HELD, now + cfg.hold, holder)
      holds[holder] = true
    else
      if not redis.call('ZSCORE', K_LINE, holder) then
        redis.call('ZADD', K_LINE, redis.call('INCR', K_TICKET), holder)
      end
      redis.call('ZADD', K_SEEN, now + cfg.grace, holder)
    end
  end
  local served = hand_out(cfg, asking)
  for _, holder in ipairs(waiters) do
    out[#out + 1] = (holds[holder] or served[holder]) and 0 or 1
  end
  return out
end

if op == 'leave' then
  local holders = {}
  for i = 6, #ARGV do holders[#holders + 1] = ARGV[i] end
  if #holders == 0 then return 0 end
  local given = redis.call('ZREM', K_HELD, unpack(holders))
  redis.call('ZREM', K_LINE, unpack(holders))
  redis.call('ZREM', K_SEEN, unpack(holders))
  local burst, cfg = settings()
  if burst and cfg.conc then
    sweep()
    hand_out(cfg, {})
  end
  return given
end

return redis.error_reply('unknown slots op ' .. tostring(op))
