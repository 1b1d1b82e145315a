-- ARGV: prefix, id, attempt, call id (random per call), then pairs of (kind, data JSON)
-- Appends a run's events to the task's capped stream; a 'progress' event is also kept on the
-- task as its latest progress. A task in a final state takes no more events (its stream ends
-- with its 'final' event; what arrives later is a zombie's). The task keeps the id of the last
-- call that appended to it: the same call sent again (its reply was lost with its connection)
-- appends nothing. Returns how many were appended (by the first call, when sent again).
local id, attempt, call = ARGV[2], ARGV[3], ARGV[4]
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'ev', 'evcall')
local state = f[1]
if not state or state == 'succeeded' or state == 'dead' or state == 'cancelled' then
  return 0
end
local count = (#ARGV - 4) / 2
if f[3] == call then return count end
local ek = events_key(id)
local progress
for i = 5, #ARGV, 2 do
  redis.call('XADD', ek, 'MAXLEN', '~', EVENT_CAP, '*', 'kind', ARGV[i], 'data', ARGV[i + 1],
    'attempt', attempt)
  if ARGV[i] == 'progress' then progress = ARGV[i + 1] end
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
