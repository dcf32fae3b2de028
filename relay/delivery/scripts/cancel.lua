-- pending → canceled: it is never sent afterwards (a parked copy is dropped when it comes up).
local status = redis.call('HGET', K.delivery, 'status')
if not status then return 'missing' end
if status ~= 'pending' then return status end
redis.call('HSET', K.delivery, 'status', 'canceled', 'next_attempt_at', '',
  'last_error', 'canceled by an operator', 'updated_ms', int(NOW))
redis.call('ZREM', K.due, A.id)
return 'ok'
