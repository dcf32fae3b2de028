-- Records the history writer has committed to PostgreSQL (events, deliveries, audit entries)
-- leave Redis, and their stream entries are acknowledged and deleted, in one step. A delivery
-- leaves only if it is still in the state that was written (same status and `updated_ms`): one
-- retried meanwhile stays in flight, and comes back to the writer when it ends again. An event
-- leaves once it is written and none of its deliveries is left in Redis (`live` counts them).

-- Change an event's `field` by `change` ('stored' set, or `live` counted down), and let it go
-- if that leaves it written with no delivery in Redis. One read, one write at most.
local function settle_event(id, field, change)
  local key = K.event .. id
  local e = redis.call('HMGET', key, 'tenant_id', 'live', 'stored', 'upstream_key')
  if not e[1] then return end  -- gone already
  -- An event accepted before events counted their deliveries: nothing says when its last one
  -- leaves, so it stays until its TTL.
  if not e[2] then return end
  local live, stored = tonumber(e[2]), e[3] == '1'
  if field == 'stored' then
    redis.call('HSET', key, 'stored', 1)
    stored = true
  else
    live = redis.call('HINCRBY', key, 'live', change)
  end
  if stored and live <= 0 then
    -- History answers for its upstream id from now on, after a short overlap.
    if e[4] then redis.call('EXPIRE', e[4], A.upstream_grace) end
    redis.call('DEL', key)
    redis.call('ZREM', K.events, id)
    redis.call('ZREM', K.tenant_events .. e[1], id)
  end
end

for _, e in ipairs(A.events) do settle_event(e, 'stored') end
for _, a in ipairs(A.audits) do
  redis.call('DEL', K.audit .. a[1])
  redis.call('ZREM', K.audits, a[1])
  if a[2] ~= '' then redis.call('ZREM', K.tenant_audit .. a[2], a[1]) end
end
local released = 0
for _, d in ipairs(A.deliveries) do
  local key = K.delivery .. d[1]
  local st = redis.call('HMGET', key, 'status', 'updated_ms', 'event_id', 'tenant_id',
    'webhook_id')
  if st[1] and st[1] == d[2] and st[2] == d[3] then
    redis.call('DEL', key, key .. K.attempts_suffix)
    redis.call('ZREM', K.deliveries, d[1])
    redis.call('ZREM', K.tenant_deliveries .. st[4], d[1])
    redis.call('ZREM', K.webhook_deliveries .. st[5], d[1])
    settle_event(st[3], 'live', -1)
    released = released + 1
  end
end
if #A.entries > 0 then
  redis.call('XACK', K.history, K.group, unpack(A.entries))
  redis.call('XDEL', K.history, unpack(A.entries))
end
return released
