-- pending → delivering, for up to A.limit due deliveries, in turns between tenants and, within a
-- tenant, between its endpoints.
-- Each endpoint's deliveries wait in its queue: pending ones scored by when they are due, and
-- delivering ones by when their lease runs out less A.in_flight (2^50 ms), which puts them all
-- before any pending one. So one read of the queue's first entries, by rank, gives the
-- endpoint's attempts in flight (its slots in use: at most its concurrency of them come first),
-- the first of their leases to run out, those whose worker died (the leases below
-- NOW - A.in_flight, first of all, to be taken over) and, after them, what is due: an endpoint
-- keeps no set of slots of its own. A deleted or disabled webhook's delivery, which holds no
-- slot, is scored by its lease alone, among the pending ones, and so is a delivery an older
-- relay leased. The tenants' set, and each tenant's set of endpoints, score each member by when
-- to look at it next: now or earlier if it has something
-- due, else when what it waits for comes (its next due time, its first lease to run out, the
-- next rate window); and whoever frees what it waits for sooner (a settle freeing a slot, a new
-- or rescheduled delivery, a webhook change) brings that time forward. A claim reads the tenants
-- whose time has come, oldest first, and gives each a share of what is left, which it shares
-- between its endpoints whose time has come; one served that could take more is looked at again
-- after those already waiting (its time becomes now): tenants, and endpoints, take turns. One
-- waiting costs nothing meanwhile, so no backlog an endpoint cannot take hides what others could.
-- A tenant's only endpoint in its set keeps the time it had (due) rather than have it written at
-- each claim: the tenant's own time says when to look again (its first lease to run out, at the
-- latest), every look at the tenant looks at that endpoint, and the next accept would only set
-- it back to now.
-- A tenant has at most A.tenant_concurrency attempts in flight, an endpoint its concurrency:
-- the one its answers adapted it to (K.concurrency, which settle writes), else A.concurrency,
-- and at most A.concurrency_max (which may have been lowered since it was written). And
-- as a slot held by an attempt that hangs frees only at the timeout, an endpoint whose last
-- attempt did not answer quickly (or that has not answered yet) may use only the tenant's slow
-- share, A.slow_concurrency: the rest is kept for its endpoints that answer quickly. Those
-- waiting for a slow slot get the ones settle frees, the one served longest ago first.
-- Every read is by rank or with a LIMIT: a call examines at most A.scan deliveries and reads at
-- most A.wakes tenants, and A.wakes endpoints of each.

local budget = A.scan
local claims = {}
local taken_over = 0

-- A lease whose worker died stays in its tenant's slots until it is taken over (and freed by the
-- attempt that takes it over): it is counted out only when the set looks full. Leases only:
-- WAITING, scored +inf, is none.
local function free_slots(slots, cap)
  local used = redis.call('ZCOUNT', slots, '-inf', '(+inf')
  if used >= cap then
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', NOW)
    used = redis.call('ZCOUNT', slots, '-inf', '(+inf')
  end
  return cap - used
end
-- When the first lease of a set runs out.
local function first_expiry(slots)
  local first = redis.call('ZRANGE', slots, '-inf', '(+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
  return tonumber(first[2]) or (NOW + 1000)
end
-- A tenant at its concurrency is looked at again when its first lease runs out, or sooner when a
-- settle frees one of its slots: WAITING in its set tells that settle to bring it forward.
local function wait_for_slot(slots)
  redis.call('ZADD', slots, '+inf', WAITING)
  return first_expiry(slots)
end

-- Within one call each endpoint's record, each tenant's free slots, and each
-- event's payload are read once: a batch for one endpoint, or one event's fan-out, does not
-- read them per delivery.
local endpoints = {}
local function endpoint(wh)
  local e = endpoints[wh]
  if not e then
    local got = redis.call('MGET', K.webhook .. wh, K.failing .. wh, K.quick .. wh,
      K.concurrency .. wh)
    local record = got[1]
    local ok, w = false, nil
    if record then ok, w = pcall(cjson.decode, record) end
    e = {record = record, enabled = ok and w.enabled == true,
      rate = ok and w.rate_limit_per_second or nil, failing = got[2] and 1 or 0,
      quick = got[3] and true or false,
      cap = math.min(tonumber(got[4]) or A.concurrency, A.concurrency_max)}
    endpoints[wh] = e
  end
  return e
end
local tenants = {}
local function tenant(t)
  local s = tenants[t]
  if not s then
    s = {endpoints = K.endpoints .. t, slots = K.tenant_slots .. t,
      slow_slots = K.tenant_slow_slots .. t, slow = K.endpoints_slow .. t,
      served = K.slow_served .. t}
    s.free = free_slots(s.slots, A.tenant_concurrency)
    tenants[t] = s
  end
  return s
end
-- Each event's payload is in the reply once, however many of its deliveries are claimed; and
-- once the payloads in it would pass A.payload_bytes, a delivery of another event is not claimed
-- but left due for the next call, and its endpoint is served no further in this one (`full`).
-- Without the bound a reply, and the time Redis spends building it while every other client
-- waits, grows with the bodies and fan-outs that are due. A payload is read once to be weighed
-- and sent (the one that does not fit is the only one read for nothing), and one the caller
-- holds from an earlier claim (A.known) is not sent again. The only delivery of an event with a
-- small payload carries a copy of it (see accept.lua), read with the delivery.
local payloads, payload_bytes, full = {}, 0, false
local known = {}
for _, id in ipairs(A.known) do known[id] = true end
local events = {}
local function payload_fits(event_id, copy)
  if payloads[event_id] or known[event_id] then return true end
  if full then return false end
  local payload = copy or redis.call('HGET', K.event .. event_id, EVENT.payload) or ''
  if payload_bytes > 0 and payload_bytes + #payload > A.payload_bytes then
    full = true
    return false
  end
  payloads[event_id] = payload
  payload_bytes = payload_bytes + #payload
  table.insert(events, event_id)
  table.insert(events, payload)
  return true
end

-- Claims one delivery of the queue if it may go. Returns the claim (or nil), when to look at the
-- delivery next (nil: it left the queue), true if its payload would not fit, and true if it
-- turned out to be in flight, holding one of the endpoint's slots.
local sequence = 0
-- Due, but with no record: evicted, or lost by a Redis that had not persisted it. Nothing says
-- where it goes any more, so it leaves its queue, and the worker reports it.
local missing = {}
local function try(id, wh, e, t)
  local d = redis.call('HMGET', K.delivery .. id, F.status, F.attempt_count, F.lease_until,
    F.webhook_id, F.event_id, F.cycle_start, F.traceparent, F.request_id, F.manual,
    F.next_attempt_at, F.payload)
  local status = d[1]
  local queue = K.queue .. wh
  if not status then table.insert(missing, id) end
  if not status or (status ~= S.pending and status ~= S.delivering) then
    redis.call('ZREM', queue, id)
    return nil, nil
  end
  if status == S.delivering and tonumber(d[3]) > NOW then
    -- Leased, though its score said due (as an older relay, scoring it by its lease alone, may
    -- have left it): its lease decides when to look again, and it holds one of the endpoint's
    -- slots from now on.
    redis.call('ZADD', queue, e.enabled and int(tonumber(d[3]) - A.in_flight) or d[3], id)
    return nil, tonumber(d[3]), false, e.enabled
  end
  if not payload_fits(d[5], d[11]) then return nil, NOW, true end
  if status == S.delivering then
    -- Its worker died or stalled past the lease: another attempt takes over.
    taken_over = taken_over + 1
  end
  local lease = NOW + A.lease_ms
  if e.enabled then
    redis.call('ZADD', K.tenant_slots .. t, lease, id)
    if not e.quick then redis.call('ZADD', K.tenant_slow_slots .. t, lease, id) end
  end
  sequence = sequence + 1
  local token = A.owner .. ':' .. int(NOW) .. ':' .. sequence
  -- An operator's retry asked for a manual attempt (outside the schedule; settle clears the
  -- mark, so one that takes over a stalled one is manual too). Unless the schedule's next
  -- attempt came due before it went: then this is that one, and the two are one request.
  local manual = d[9] == '1' and (tonumber(d[10]) or 0) > NOW
  redis.call('HSET', K.delivery .. id, F.status, S.delivering, F.lease_until, int(lease),
    F.lease_token, token)
  if d[9] == '1' and not manual then redis.call('HSET', K.delivery .. id, F.manual, '') end
  -- In flight: before every pending one, holding one of the endpoint's slots (see above).
  redis.call('ZADD', queue, e.enabled and int(lease - A.in_flight) or lease, id)
  return {id, tonumber(d[2]) + 1, token, tonumber(d[6]), wh, d[5], e.record or '', d[7] or '',
    e.failing, e.quick and 1 or 0, d[8] or '', manual and 1 or 0, e.enabled and 1 or 0}, lease
end

-- An endpoint not known to answer quickly, when its tenant's slow share is in use: it waits
-- for settle to hand it a freed slow slot, or at the latest for the first of them to run out.
local function wait_slow(T, wh)
  redis.call('ZADD', T.slow, tonumber(redis.call('HGET', T.served, wh)) or 0, wh)
  return first_expiry(T.slow_slots)
end

-- What the first `count` entries of an endpoint's queue say (see the top): how many attempts
-- are in flight and when the first of their leases runs out, the deliveries that may go (due,
-- or leased by a worker that died) in the order they came due, the first due time after them,
-- whether WAITING was read, and whether the read went past the attempts in flight.
local function read_queue(queue, count)
  local listed = redis.call('ZRANGE', queue, 0, count - 1, 'WITHSCORES')
  local q = {live = 0, go = {}, whole = #listed < 2 * count, past = false, waiting = false}
  local dead = NOW - A.in_flight
  for i = 1, #listed, 2 do
    local id = listed[i]
    if id == WAITING then
      q.waiting, q.past = true, true
    else
      local score = tonumber(listed[i + 1])
      if score < 0 and score > dead then
        q.live = q.live + 1
        q.lease = q.lease or score + A.in_flight
      else
        q.past = q.past or score >= 0
        if score <= NOW then
          table.insert(q.go, {id = id, at = score < 0 and score + A.in_flight or score, rank = i})
        elseif not q.after then
          q.after = score
        end
      end
    end
  end
  table.sort(q.go, function(a, b) return a.at < b.at or (a.at == b.at and a.rank < b.rank) end)
  -- Only leases were read, the first ones run out: those still running are counted instead.
  if not q.whole and not q.past then
    q.live = redis.call('ZCOUNT', queue, '(' .. int(dead), '(0')
    if not q.lease and q.live > 0 then
      local first = redis.call('ZRANGE', queue, '(' .. int(dead), '(0', 'BYSCORE', 'LIMIT', 0, 1,
        'WITHSCORES')
      q.lease = tonumber(first[2]) + A.in_flight
    end
  end
  return q
end

-- Up to `want` of one endpoint's due deliveries. Returns how many it claimed, and when to look
-- at the endpoint next (false: its queue is empty, it leaves the tenant's set).
local function serve(t, T, wh, want)
  local e = endpoint(wh)
  local queue = K.queue .. wh
  local room, window, left = math.min(want, budget), nil, nil
  -- A deleted or disabled webhook's deliveries end without a request: no slot, no rate.
  if e.enabled then
    room = math.min(room, T.free)
    if not e.quick then
      if T.slow_free == nil then T.slow_free = free_slots(T.slow_slots, A.slow_concurrency) end
      if T.slow_free <= 0 then return 0, wait_slow(T, wh) end
      room = math.min(room, T.slow_free)
    end
    if type(e.rate) == 'number' then
      window = K.rate .. wh .. ':' .. int(math.floor(NOW / 1000))
      left = e.rate - tonumber(redis.call('GET', window) or '0')
      if left <= 0 then return 0, (math.floor(NOW / 1000) + 1) * 1000 end
      room = math.min(room, left)
    end
  end
  -- Its attempts in flight come first (at most its concurrency of them, unless that was lowered
  -- since: then it is full), then its share, and one entry past the share says whether more is
  -- due, or when the next is, without another read. A disabled webhook's attempts in flight
  -- were claimed while it was enabled, within the highest concurrency.
  local q = read_queue(queue, (e.enabled and e.cap or A.concurrency_max) + room + 1)
  local free = e.enabled and e.cap - q.live or room
  -- A full endpoint is looked at again when its first lease runs out, or sooner when a settle
  -- frees one of its slots: WAITING in its queue tells that settle to bring it forward.
  local function wait_for_slot_of_endpoint(lease)
    if not q.waiting then redis.call('ZADD', queue, '+inf', WAITING) end
    return lease or NOW + A.lease_ms
  end
  if free <= 0 then return 0, wait_for_slot_of_endpoint(q.lease) end
  local got, looked, more, next, lease = 0, 0, false, q.after, q.lease
  for _, go in ipairs(q.go) do
    local id = go.id
    if looked == room or free <= 0 then
      more = true
      break
    end
    looked = looked + 1
    budget = budget - 1
    local claim, now_at, unfit, held = try(id, wh, e, t)
    if claim then
      got = got + 1
      table.insert(claim, e.cap)  -- the concurrency it was claimed at
      table.insert(claim, 0)  -- whether it goes with every slot in use (below)
      table.insert(claims, claim)
    end
    if e.enabled and (claim or held) then
      free = free - 1
      if not lease or now_at < lease then lease = now_at end
    end
    if now_at and (not next or now_at < next) then next = now_at end
    if unfit then
      more = true
      break
    end
  end
  if lease and (not next or lease < next) then next = lease end
  -- Those that fill the endpoint's slots go with every slot in use: only a quick success of
  -- such an attempt says the endpoint could take more (see settle). All of them, not only the
  -- last: when several settles come before the next claim, it takes several at once.
  if e.enabled and got > 0 and free <= 0 then
    for i = #claims - got + 1, #claims do claims[i][15] = 1 end
  end
  if window and got > 0 then
    redis.call('INCRBY', window, got)
    redis.call('EXPIRE', window, 2)
  end
  if e.enabled then
    T.free = T.free - got
    if not e.quick and got > 0 then
      T.slow_free = T.slow_free - got
      redis.call('HSET', T.served, wh, int(NOW))
      redis.call('ZREM', T.slow, wh)
    end
    if free <= 0 then return got, wait_for_slot_of_endpoint(lease) end
    if not e.quick and T.slow_free <= 0 and more then return got, wait_slow(T, wh) end
    if window and left - got <= 0 then return got, (math.floor(NOW / 1000) + 1) * 1000 end
  end
  -- A WAITING left from when it was full, whose slot freed otherwise (a lease ran out, the
  -- webhook was disabled): nobody waits for a slot any more.
  if q.waiting then redis.call('ZREM', queue, WAITING) end
  -- One that needs no slot and has more goes first again (a webhook change put it first).
  if more then return got, e.enabled and NOW or 0 end
  return got, next and math.max(next, NOW) or false
end

-- The members of a set of turns (the tenants', or a tenant's endpoints) whose time has come, at
-- most A.wakes, and the time of the first after them (nil: none). Read by rank, one past the
-- most taken: that one says when to look again, unless one served is sooner, with no second read.
local function whose_time_has_come(key)
  local listed = redis.call('ZRANGE', key, 0, A.wakes, 'WITHSCORES')
  local due = {}
  for i = 1, #listed, 2 do
    if tonumber(listed[i + 1]) > NOW or #due == A.wakes then
      return due, tonumber(listed[i + 1])
    end
    table.insert(due, listed[i])
  end
  return due, nil
end

-- A share of what is left for one tenant whose time has come, between its endpoints whose time
-- has come. Returns when to look at the tenant next (false: nothing of it is queued). At its
-- concurrency, it still serves its deleted or disabled webhooks, which need no slot and come
-- first (see serve): the others wait where they are for one of the tenant's slots to free.
local function visit(t, want)
  local T = tenant(t)
  local due, soonest = whose_time_has_come(T.endpoints)
  local again = soonest ~= nil and soonest <= NOW  -- more are due than were taken
  -- The tenant's only endpoint in its set keeps its time (see the top).
  local alone = #due == 1 and soonest == nil
  for i, wh in ipairs(due) do
    if want <= 0 or budget <= 0 then
      again = true
      break
    end
    if T.free <= 0 and endpoint(wh).enabled then break end
    local got, next = serve(t, T, wh, math.ceil(want / (#due - i + 1)))
    want = want - got
    if next then
      if not alone then redis.call('ZADD', T.endpoints, next, wh) end
      again = again or next <= NOW
      if not soonest or next < soonest then soonest = next end
    else
      -- Also from the record of turns at the slow share, whether or not it is quick now: it
      -- may have turned quick since it was served from it.
      redis.call('ZREM', T.endpoints, wh)
      redis.call('ZREM', T.slow, wh)
      redis.call('HDEL', T.served, wh)
    end
  end
  if T.free <= 0 then
    return (soonest and soonest <= 0) and NOW or wait_for_slot(T.slots)
  end
  if again then return NOW end
  return soonest or false
end

local due, soonest = whose_time_has_come(K.tenants)
for i, t in ipairs(due) do
  if #claims >= A.limit or budget <= 0 then
    soonest = NOW  -- those left are due
    break
  end
  local next = visit(t, math.ceil((A.limit - #claims) / (#due - i + 1)))
  if next then
    redis.call('ZADD', K.tenants, next, t)
    if not soonest or next < soonest then soonest = next end
  else
    redis.call('ZREM', K.tenants, t)
  end
end
-- When to look again, in ms from now: when the first tenant's time comes (0: it has come, or
-- the payload bound left due deliveries for the next call; -1: nothing in flight at all).
local wait = -1
if full then
  wait = 0
elseif soonest then
  wait = int(math.max(0, soonest - NOW))
end
return {int(NOW), wait, claims, taken_over, events, missing}
