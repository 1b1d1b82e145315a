-- ARGV: prefix, id, attempt, then pairs of (kind, data JSON)
-- Appends a run's events to the task's capped stream; a 'progress' event is also kept on the
-- task as its latest progress. A task in a final state takes no more events (its stream ends
-- with its 'final' event; what arrives later is a zombie's). Returns how many were appended.
local id, attempt = ARGV[2], ARGV[3]
local tk = task_key(id)
local f = redis.call('HMGET', tk, 'state', 'ev')
local state = f[1]
if not state or state == 'succeeded' or state == 'dead' or state == 'cancelled' then
  return 0
end
local ek = events_key(id)
local progress
for i = 4, #ARGV, 2 do
  redis.call('XADD', ek, 'MAXLEN', '~', EVENT_CAP, '*', 'kind', ARGV[i], 'data', ARGV[i + 1],
    'attempt', attempt)
  if ARGV[i] == 'progress' then progress = ARGV[i + 1] end
end
if progress and not f[2] then
  redis.call('HSET', tk, 'progress', progress, 'ev', '1')
elseif progress then
  redis.call('HSET', tk, 'progress', progress)
elseif not f[2] then
  redis.call('HSET', tk, 'ev', '1')
end
return (#ARGV - 3) / 2
