-- pending → canceled: it is never sent afterwards, and no longer waits in its endpoint's parking.
local d = hash_of(K.delivery)
if not d.status then return 'missing' end
if d.status ~= 'pending' then return d.status end
d.status, d.next_attempt_at = 'canceled', ''
d.last_error, d.updated_ms = 'canceled by an operator', int(NOW)
redis.call('HSET', K.delivery, 'status', d.status, 'next_attempt_at', '',
  'last_error', d.last_error, 'updated_ms', d.updated_ms)
redis.call('ZREM', K.due, A.id)
redis.call('ZREM', K.parked .. d.webhook_id, A.id)
archive_delivery(A.id, d, redis.call('LRANGE', K.attempts, 0, -1))
return 'ok'
