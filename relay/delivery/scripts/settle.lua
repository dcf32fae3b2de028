-- delivering → pending | delivered | failed | canceled, by the holder of the lease only.
-- Writes the attempt (if one was made), the next due time and the endpoint's failure streak;
-- frees the endpoint slot and moves one parked delivery back to due.
local id = A.id
local st = redis.call('HMGET', K.delivery, 'status', 'attempt_count', 'lease_token')
if st[1] ~= 'delivering' or tonumber(st[2]) ~= A.attempt - 1 or st[3] ~= A.token then
  return {0, '', int(NOW)}
end
if redis.call('ZREM', K.slots, id) == 1 then
  local next = redis.call('ZRANGE', K.parked, 0, 0)[1]
  if next then
    redis.call('ZREM', K.parked, next)
    redis.call('ZADD', K.due, NOW, next)
    wake()
  end
end
local count = A.attempt - 1
if A.record ~= '' then
  redis.call('RPUSH', K.attempts, A.record)
  count = A.attempt
end
-- One HSET for every field that changes (this script runs once per attempt); the lease is
-- blanked rather than deleted, which would be one more command.
local due = A.status == 'pending' and NOW + A.delay_ms or nil
local delivered = A.status == 'delivered' and int(NOW) or ''
redis.call('HSET', K.delivery, 'status', A.status, 'attempt_count', count,
  'last_status_code', A.last_status_code, 'last_error', A.last_error, 'updated_ms', int(NOW),
  'next_attempt_at', due and int(due) or '', 'delivered_ms', delivered, 'lease_until', '',
  'lease_token', '')
if due then
  redis.call('ZADD', K.due, due, id)
  -- An idle worker sleeps until the head of the due set it last saw; this may be sooner.
  wake()
else
  -- The schedule ended: the history writer owns it from here, and lets it go from Redis
  -- once PostgreSQL has it. Records in flight have no TTL: they leave that way, never by
  -- expiring (a managed Redis evicting keys with a TTL would take them otherwise).
  redis.call('ZREM', K.due, id)
  archive('d', id)
end
if A.endpoint == 'ok' then
  redis.call('DEL', K.failing)
elseif A.endpoint == 'fail' then
  redis.call('SET', K.failing, int(NOW), 'NX')
  redis.call('PEXPIRE', K.failing, A.failing_ttl_ms)
  return {1, redis.call('GET', K.failing), int(NOW)}
end
return {1, '', int(NOW)}
