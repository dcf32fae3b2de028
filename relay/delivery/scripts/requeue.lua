-- Deliveries in flight under the layout before endpoint queues (one due set, and per endpoint
-- a parked set listed in a wakes set) move to their endpoints' queues, up to A.count a call,
-- keeping their scores; finished or missing ones are dropped. Replies how many entries it
-- moved or dropped, and how many are left: callers repeat until none is.
local moved = 0
local function move(from, id, score)
  local d = redis.call('HMGET', K.delivery .. id, F.status, F.webhook_id, F.tenant_id)
  if d[1] == S.pending or d[1] == S.delivering then
    redis.call('ZADD', K.queue .. d[2], 'NX', score, id)
    redis.call('ZADD', K.endpoints .. d[3], 'LT', score, d[2])
    redis.call('ZADD', K.tenants, 'LT', score, d[3])
  end
  redis.call('ZREM', from, id)
  moved = moved + 1
end

local due = redis.call('ZRANGE', K.old_due, 0, A.count - 1, 'WITHSCORES')
for i = 1, #due, 2 do move(K.old_due, due[i], due[i + 1]) end
for _, wh in ipairs(redis.call('ZRANGE', K.old_wakes, 0, A.count - 1)) do
  if moved >= A.count then break end
  local parked = K.old_parked .. wh
  local entries = redis.call('ZRANGE', parked, 0, A.count - moved - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do move(parked, entries[i], entries[i + 1]) end
  if redis.call('EXISTS', parked) == 0 then redis.call('ZREM', K.old_wakes, wh) end
end
if moved > 0 then wake() end
return {moved, redis.call('ZCARD', K.old_due) + redis.call('ZCARD', K.old_wakes)}
