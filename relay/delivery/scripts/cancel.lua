-- pending → canceled: it is never sent afterwards, and no longer waits in its endpoint's parking.
local status = redis.call('HGET', K.delivery, 'status')
if not status then return 'missing' end
if status ~= 'pending' then return status end
redis.call('HSET', K.delivery, 'status', 'canceled', 'next_attempt_at', '',
  'last_error', 'canceled by an operator', 'updated_ms', int(NOW))
redis.call('ZREM', K.due, A.id)
redis.call('ZREM', K.parked .. redis.call('HGET', K.delivery, 'webhook_id'), A.id)
archive('d', A.id)
return 'ok'
