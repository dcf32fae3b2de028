-- delivering → pending | delivered | failed | canceled, by the holder of the lease only.
-- Writes the attempt (if one was made), the next due time and the endpoint's failure streak;
-- frees the endpoint slot and moves one parked delivery back to due.
-- `at` is Redis's clock as the worker tells it: the claim's TIME plus the time the attempt took
-- (a monotonic duration), which spares every settle a TIME call and agrees with Redis's own
-- clock to well under a millisecond.
local at = A.now_ms
local id = A.id
local st = redis.call('HMGET', K.delivery, 'status', 'attempt_count', 'lease_token', 'event_id',
  'webhook_id', 'tenant_id', 'event_type', 'created_at', 'cycle_start')
if st[1] ~= 'delivering' or tonumber(st[2]) ~= A.attempt - 1 or st[3] ~= A.token then
  return {0, '', int(at)}
end
if redis.call('ZREM', K.slots, id) == 1 then
  local next = redis.call('ZRANGE', K.parked, 0, 0)[1]
  if next then
    redis.call('ZREM', K.parked, next)
    redis.call('ZADD', K.due, at, next)
    wake()
  end
end
local count = A.attempt - 1
if A.record ~= '' then count = A.attempt end
local due = A.status == 'pending' and at + A.delay_ms or nil
-- A rescheduled attempt joins the delivery's list; the last one is kept on the delivery (one
-- write fewer) until history has it.
if due and A.record ~= '' then redis.call('RPUSH', K.attempts, A.record) end
-- One HSET for every field that changes (this script runs once per attempt); the lease is
-- blanked rather than deleted, which would be one more command.
local delivered = A.status == 'delivered' and int(at) or ''
redis.call('HSET', K.delivery, 'status', A.status, 'attempt_count', count,
  'last_status_code', A.last_status_code, 'last_error', A.last_error, 'updated_ms', int(at),
  'next_attempt_at', due and int(due) or '', 'delivered_ms', delivered, 'lease_until', '',
  'lease_token', '', 'last_attempt', due and '' or A.record)
if due then
  redis.call('ZADD', K.due, due, id)
  -- An idle worker sleeps until the head of the due set it last saw; this may be sooner.
  wake()
else
  -- The schedule ended: the history writer owns it from here, and lets it go from Redis
  -- once PostgreSQL has it. Records in flight have no TTL: they leave that way, never by
  -- expiring (a managed Redis evicting keys with a TTL would take them otherwise).
  redis.call('ZREM', K.due, id)
  local attempts = A.attempt > 1 and redis.call('LRANGE', K.attempts, 0, -1) or {}
  if A.record ~= '' then table.insert(attempts, A.record) end
  archive_delivery(id, {id = id, event_id = st[4], webhook_id = st[5], tenant_id = st[6],
    event_type = st[7], created_at = st[8], cycle_start = st[9], status = A.status,
    attempt_count = tostring(count), last_status_code = A.last_status_code,
    last_error = A.last_error, updated_ms = int(at), delivered_ms = delivered}, attempts)
end
if A.endpoint == 'ok' then
  -- A streak the claim did not see began during this attempt: a later success ends it.
  if A.failing then redis.call('DEL', K.failing) end
elseif A.endpoint == 'fail' then
  redis.call('SET', K.failing, int(at), 'NX')
  redis.call('PEXPIRE', K.failing, A.failing_ttl_ms)
  return {1, redis.call('GET', K.failing), int(at)}
end
return {1, '', int(at)}
