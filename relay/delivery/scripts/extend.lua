-- delivering on a claim's short lease → delivering on the attempt's lease, for attempts of one
-- worker still running. A claim leases its deliveries for seconds only, so that a claim whose
-- reply never came (Redis stalled past the caller's timeout, then ran it) holds them for no
-- longer; the worker that did get its claims extends the leases of the attempts that outlast a
-- share of that (most have settled by then, and never need this call).
-- Only for the lease's holder (its token): a lease that ran out is still the holder's until a
-- claim takes the delivery over, which gives it a new token (as after Redis was away for longer
-- than a claim's lease, with attempts in flight). Replies 1 (extended) or 0 per claim, in order.
local out = {}
for _, c in ipairs(A.claims) do
  local id, token = c[1], c[2]
  local key = K.delivery .. id
  local st = redis.call('HMGET', key, F.status, F.lease_token, F.webhook_id, F.tenant_id)
  if st[1] == S.delivering and st[2] == token then
    local lease = int(NOW + A.lease_ms)
    local wh, t = st[3], st[4]
    redis.call('HSET', key, F.lease_until, lease)
    -- Its place in the queue and its tenant's slot are scored by the lease: a claim reads them
    -- to know when to look again, and counts a slot out when its lease has run out. In its
    -- queue, one holding a slot of its endpoint comes before every pending one (see claim.lua),
    -- one holding none (its webhook was disabled or deleted when claimed) among them by its
    -- lease alone; XX: such a delivery holds no tenant slot, and gets none here.
    redis.call('ZADD', K.queue .. wh, 'XX', c[3] == 1 and int(NOW + A.lease_ms - A.in_flight)
      or lease, id)
    redis.call('ZADD', K.tenant_slots .. t, 'XX', lease, id)
    redis.call('ZADD', K.tenant_slow_slots .. t, 'XX', lease, id)
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
