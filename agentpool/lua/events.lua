-- ARGV: prefix, id, attempt, call id (random per call), run token ('' = none), then pairs of
-- (kind, data JSON)
-- Appends a run's events to the task's capped stream; a 'progress' event is also kept on the
-- task as its latest progress. A task in a final state takes no more events (its stream ends
-- with its 'final' event; what arrives later is a zombie's), nor does a task another run
-- holds when a token is given (a run whose lease was lost, before its worker knows). The
-- task keeps the id of the last call that appended to it: the same call sent again (its
-- reply was lost with its connection) appends nothing. Returns how many were appended (by
-- the first call, when sent again).
--
-- One exception to the final state: the events of the run that succeeded, sent in the same
-- trip as its completion. Redis runs the completion first when it had to load this script
-- anew for that trip (a restart, a failover, a new version beside the old): they are
-- appended, and the 'final' event moves behind them.
local id, attempt, call, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'ev', 'evcall', 'token')
local state = f[1]
local late = state == 'succeeded' and token ~= '' and f[4] == token
if not state or (state == 'succeeded' and not late) or state == 'dead'
    or state == 'cancelled' then
  return 0
end
if token ~= '' and not late and (state ~= 'running' or f[4] ~= token) then return 0 end
local count = (#ARGV - 5) / 2
if f[3] == call then return count end
local ek = events_key(id)
local final, final_id
if late then
  local last = redis.call('XREVRANGE', ek, '+', '-', 'COUNT', 1)[1]
  if last and last[2][2] == 'final' then
    final, final_id = last[2], last[1]
  else
    final = {'kind', 'final', 'data', '{"state":"succeeded"}', 'attempt', attempt}
  end
end
-- The first write is an XADD, which a full Redis refuses (common.lua): events wait for room,
-- late ones too.
local progress
for i = 6, #ARGV, 2 do
  redis.call('XADD', ek, 'MAXLEN', '~', EVENT_CAP, '*', 'kind', ARGV[i], 'data', ARGV[i + 1],
    'attempt', attempt)
  if ARGV[i] == 'progress' then progress = ARGV[i + 1] end
end
if final then
  if final_id then redis.call('XDEL', ek, final_id) end
  redis.call('XADD', ek, 'MAXLEN', '~', EVENT_CAP, '*', unpack(final))
  local ttl = redis.call('PTTL', tk)
  if ttl > 0 then redis.call('PEXPIRE', ek, ttl) end
end
local fields = {'evcall', call}
if progress then
  fields[#fields + 1] = 'progress'
  fields[#fields + 1] = progress
end
if not f[2] then
  fields[#fields + 1] = 'ev'
  fields[#fields + 1] = '1'
end
redis.call('HSET', tk, unpack(fields))
return count
