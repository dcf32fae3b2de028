-- (new) → pending: the event, its deliveries, their indexes and due times, all or nothing.
-- An upstream id seen before returns the first event's id and writes nothing.
if A.upstream_key ~= cjson.null then
  local first = redis.call('GET', A.upstream_key)
  if first then return first end
  redis.call('SET', A.upstream_key, A.id, 'EX', A.ttl)
end
redis.call('HSET', K.event, 'payload', A.payload, 'type', A.type, 'tenant_id', A.tenant_id,
  'created_at', A.created_at, 'upstream_id', A.upstream_id, 'deliveries', A.delivery_ids)
redis.call('EXPIRE', K.event, A.ttl)
redis.call('ZADD', K.events, 0, A.id)
redis.call('ZADD', K.tenant_events, 0, A.id)
redis.call('SADD', K.indexes, K.tenant_events)
bump(K.metrics, K.bucket, 'events_accepted:' .. A.type)
for _, d in ipairs(A.deliveries) do
  redis.call('HSET', d.key, 'id', d.id, 'event_id', A.id, 'webhook_id', d.webhook_id,
    'tenant_id', A.tenant_id, 'event_type', A.type, 'status', 'pending', 'attempt_count', 0,
    'cycle_start', 0, 'next_attempt_at', int(NOW), 'created_at', A.created_at,
    'updated_ms', int(A.created_ms))
  if A.traceparent ~= '' then redis.call('HSET', d.key, 'traceparent', A.traceparent) end
  redis.call('EXPIRE', d.key, A.ttl)
  for _, index in ipairs(d.indexes) do redis.call('ZADD', index, 0, d.id) end
  redis.call('SADD', K.indexes, d.indexes[2], d.indexes[3])
  redis.call('ZADD', K.due, NOW, d.id)
end
if #A.deliveries > 0 then wake() end
return false
