-- pending → canceled: it is never sent afterwards, and leaves its endpoint's queue.
-- A delivery whose lease ran out is pending too (it waits for its next attempt): the stalled
-- attempt, if it ever comes back, is logged without changing the outcome (see settle).
local d = hash_of(K.delivery)
if not d.status then return 'missing' end
if d.status == S.delivering and (tonumber(d.lease_until) or 0) <= NOW then d.status = S.pending end
if d.status ~= S.pending then return d.status end
d.status, d.next_attempt_at = S.canceled, ''
d.last_error, d.updated_ms = 'canceled by an operator', int(NOW)
d.lease_until, d.lease_token, d.manual, d.payload = nil, nil, nil, nil
redis.call('HSET', K.delivery, F.status, d.status, F.next_attempt_at, '',
  F.last_error, d.last_error, F.updated_ms, d.updated_ms, F.lease_until, '', F.lease_token, '',
  F.manual, '')
-- Its place in the queue was its endpoint's slot too, if its lease ran out (see claim.lua).
redis.call('ZREM', K.queue .. d.webhook_id, A.id)
redis.call('ZREM', K.tenant_slots .. d.tenant_id, A.id)
redis.call('ZREM', K.tenant_slow_slots .. d.tenant_id, A.id)
forget_if_idle(d.tenant_id, d.webhook_id, true)
archive_delivery(A.id, d, redis.call('LRANGE', K.attempts, 0, -1))
return 'ok'
