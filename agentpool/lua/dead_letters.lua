-- ARGV: prefix, action ('requeue' | 'purge'), then task ids (none = every dead task)
-- Returns how many tasks were requeued or purged.
run_when_full()
local action = ARGV[2]
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', K_DEAD, 0, -1)
end
-- The dead set is left last, and HDEL comes before HSET: a credential that may not delete
-- (a producer's) is refused by its first write, before anything changed.
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', K_DEAD, id) then
    local tk = task_key(id)
    local score = redis.call('HGET', tk, 'score')
    if action == 'purge' or not score then
      redis.call('DEL', tk, events_key(id), checkpoint_key(id), next_key(id))
    else
      -- requeued by hand: run it, however long ago it was meant to start by
      redis.call('HDEL', tk, 'finished', 'expires')
      redis.call('HSET', tk, 'state', 'queued', 'attempts', 0)
      redis.call('ZADD', K_QUEUED, score, id)
      wake(1)
    end
    redis.call('ZREM', K_DEAD, id)
    n = n + 1
  end
end
return n
