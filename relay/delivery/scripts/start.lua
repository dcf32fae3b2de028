-- delivering on a claim's short lease → delivering on the attempt's lease, for the claims of
-- one call. A claim leases its deliveries for seconds only, so that a claim whose reply never
-- came (Redis stalled past the caller's timeout, then ran it) holds them for no longer; the
-- worker that did get its claims extends their leases with this before it makes the attempts.
-- Only for the lease's holder (its token) and while the lease holds: one that lapsed may have
-- been taken over already, or be any moment. Replies 1 (started) or 0 per claim, in order.
local out = {}
for _, c in ipairs(A.claims) do
  local id, token, wh = c[1], c[2], c[3]
  local key = K.delivery .. id
  local st = redis.call('HMGET', key, 'status', 'lease_token', 'lease_until')
  if st[1] == 'delivering' and st[2] == token and tonumber(st[3]) >= NOW then
    local lease = int(NOW + A.lease_ms)
    -- The due set keeps the claim's lease: most attempts settle before it ends, which moves
    -- the entry anyway; a claim that comes across one still running reads this lease and
    -- looks again when it ends. The endpoint's slot is counted out by its score, so it moves.
    redis.call('HSET', key, 'lease_until', lease)
    -- Only an endpoint that counts its slots has one for this delivery (XX adds none).
    redis.call('ZADD', K.slots .. wh, 'XX', lease, id)
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
