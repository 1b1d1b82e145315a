-- ARGV: prefix, reason, mode ('worker' | 'pod'), name, keep (worker id to spare, '' = none),
-- keep drain (1: leave the pod's drain request, its worker still runs)
-- mode 'worker': requeue what one worker instance holds.
-- mode 'pod': requeue what every instance of a pod holds (all but `keep`).
-- Returns {requeued, dead-lettered, cancelled, instances}.
run_when_full()
local reason, mode, name, keep = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local counts = {0, 0, 0}
local instances = 0
if mode == 'worker' then
  requeue_worker(name, reason, now, counts)
  instances = 1
else
  local prefix = name .. ':'
  for _, w in ipairs(redis.call('ZRANGE', K_WORKERS, 0, -1)) do
    if string.sub(w, 1, #prefix) == prefix and w ~= keep then
      requeue_worker(w, reason, now, counts)
      instances = instances + 1
    end
  end
  if keep == '' and ARGV[6] ~= '1' then redis.call('HDEL', K_DRAIN, name) end
end
return {counts[1], counts[2], counts[3], instances}
