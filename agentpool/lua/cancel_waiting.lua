-- ARGV: prefix, last seq (tasks submitted after it are left be), most
-- Cancels, as cancel.lua cancels one, up to `most` of the tasks waiting to run that were
-- submitted up to submit number `last`: queued ones first (the next to run first), then
-- delayed ones (delayed submits, retries waiting out their backoff). Running tasks are left.
-- Returns {cancelled, 1 when it stopped at `most` (call again), else 0}.
-- A queued task's score is its priority band plus its submit number (submit.lua), so within
-- each band the tasks submitted up to `last` are one range of scores.
run_when_full()
local last, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local BAND = 1099511627776
local now = now_ms()
local done = 0
local function cancel_all(set, ids)
  if #ids == 0 then return end
  redis.call('ZREM', set, unpack(ids))
  for _, id in ipairs(ids) do
    local tk = task_key(id)
    local f = redis.call('HMGET', tk, 'state', 'ev', 'cp')
    if f[1] then cancelled(id, tk, now, {ev = f[2], cp = f[3]}) end
    done = done + 1
  end
end
for band = 0, 9 do
  if done >= most then return {done, 1} end
  cancel_all(K_QUEUED, redis.call('ZRANGEBYSCORE', K_QUEUED, band * BAND, band * BAND + last,
    'LIMIT', 0, most - done))
end
local skipped = 0
while done < most do
  local page = redis.call('ZRANGE', K_DELAYED, skipped, skipped + 99)
  if #page == 0 then return {done, 0} end
  local ids = {}
  for _, id in ipairs(page) do
    local score = tonumber(redis.call('HGET', task_key(id), 'score') or '0')
    if score % BAND <= last and done + #ids < most then
      ids[#ids + 1] = id
    else
      skipped = skipped + 1
    end
  end
  cancel_all(K_DELAYED, ids)
end
return {done, 1}
