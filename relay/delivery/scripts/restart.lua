-- finished → pending with a fresh schedule (history kept), or a pending one given a manual
-- attempt now, for each delivery of A.ids whose status is in A.allowed. Replies per id: 'ok'
-- (due now), 'manual', 'missing', or the status that refused it, after Redis's clock.
-- A manual attempt sits outside the schedule: the delivery's `next_attempt_at` stays the
-- schedule's, and settle puts the delivery back there if the attempt fails (a 2xx ends it). A
-- pending delivery whose next attempt is due already is on its way: it is only made due now,
-- rather than sent twice in a row.
-- A delivery whose lease ran out is pending: its stalled attempt, if it comes back, is logged
-- and changes nothing else (see settle).
-- A finished delivery that has left Redis for history comes back with its record from
-- A.revive (and its event, when that left too: from A.events, once for all its deliveries,
-- with its payload in the argument it names), in this same step: it is in flight again.
local allowed = {}
for _, status in ipairs(A.allowed) do allowed[status] = true end

-- False when neither Redis nor history has its event (nothing to send): it stays in history.
local function revive(id, r)
  local event = K.event .. r.event_id
  local here = redis.call('EXISTS', event) == 1
  local e = A.events[r.event_id]
  if not here and not e then return false end
  local key = K.delivery .. id
  redis.call('HSET', key, unpack(r.delivery))
  if here then
    redis.call('HINCRBY', event, EVENT.live, 1)
  else
    redis.call('HSET', event, EVENT.payload, ARGV[e.payload], EVENT.live, 1, unpack(e.fields))
  end
  return true
end

local out = {}
local woken = false
for _, id in ipairs(A.ids) do
  local key = K.delivery .. id
  local fields = {F.status, F.attempt_count, F.lease_until, F.webhook_id, F.tenant_id,
    F.next_attempt_at}
  local st = redis.call('HMGET', key, unpack(fields))
  local r = A.revive[id]
  if not st[1] and r and allowed[r.status] and revive(id, r) then
    st = redis.call('HMGET', key, unpack(fields))
  end
  local expired = st[1] == S.delivering and (tonumber(st[3]) or 0) <= NOW
  if expired then st[1] = S.pending end
  if not st[1] then
    table.insert(out, r and not allowed[r.status] and r.status or 'missing')
  elseif not allowed[st[1]] then
    table.insert(out, st[1])
  else
    local finished = st[1] ~= S.pending
    local manual = not finished and (tonumber(st[6]) or 0) > NOW
    if finished then
      -- The last attempt joins the list the new cycle's attempts follow.
      local last = redis.call('HGET', key, F.last_attempt)
      if last and last ~= '' then
        redis.call('RPUSH', K.delivery .. id .. K.attempts_suffix, last)
      end
      redis.call('HSET', key, F.status, S.pending, F.cycle_start, st[2], F.delivered_ms, '',
        F.last_attempt, '', F.manual, '')
    end
    if expired then
      -- Its endpoint's slot was its place in the queue (see claim.lua), due now below.
      redis.call('HSET', key, F.status, S.pending, F.lease_until, '', F.lease_token, '')
      redis.call('ZREM', K.tenant_slots .. st[5], id)
      redis.call('ZREM', K.tenant_slow_slots .. st[5], id)
    end
    if manual then
      redis.call('HSET', key, F.manual, 1, F.updated_ms, int(NOW))
    else
      redis.call('HSET', key, F.next_attempt_at, int(NOW), F.updated_ms, int(NOW))
    end
    -- History shows it in flight again (its attempts are there already, or come with its end).
    if finished then
      local fields = hash_of(key)
      fields.payload = nil  -- the event's, which history has
      archive_delivery(id, fields, {})
    end
    redis.call('ZADD', K.queue .. st[4], NOW, id)
    redis.call('ZADD', K.endpoints .. st[5], 'LT', NOW, st[4])
    redis.call('ZADD', K.tenants, 'LT', NOW, st[5])
    woken = true
    table.insert(out, manual and TRIGGER.manual or 'ok')
  end
end
if woken then wake() end
return {int(NOW), out}
