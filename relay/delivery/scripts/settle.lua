-- delivering → pending | delivered | failed | canceled, by the holder of the lease (its token).
-- Writes the attempt (if one was made), the next due time and the endpoint's failure streak;
-- frees the endpoint's and the tenant's slot (bringing forward whoever waits for it) and notes
-- whether the endpoint answers quickly and how many attempts it may have in flight (see
-- claim.lua).
-- An attempt whose worker lost the lease meanwhile (it stalled past it and another took over,
-- or an operator canceled or retried the delivery) happened all the same: it joins the log as
-- the next attempt, and a 2xx ends the delivery as delivered whatever state it is in; anything
-- else changes nothing but the log, the schedule being the current holder's.
-- A manual attempt (an operator's retry of a pending delivery, A.manual) sits outside the
-- schedule: it is numbered and logged like any other, but `cycle_start` counts it out of the
-- schedule's position, and a failed one leaves the delivery due when the schedule had it.
-- `at` is Redis's clock as the worker tells it: the claim's TIME plus the time the attempt took
-- (a monotonic duration), which spares every settle a TIME call and agrees with Redis's own
-- clock to well under a millisecond.
-- Settles come in A.each: those of a worker's attempts that ended at about the same moment, in
-- one call (its round trip is most of what a settle costs the worker). Each is settled as if
-- alone, with its own fields, and its own keys (those of its delivery; the rest are the call's).
local function settle(A, K)
  local at = A.now_ms
  local id = A.id
  local st = redis.call('HMGET', K.delivery, F.status, F.attempt_count, F.lease_token, F.event_id,
    F.webhook_id, F.tenant_id, F.event_type, F.created_at, F.cycle_start, F.updated_ms)
  local delivered_now = A.status == S.delivered
  -- What a logged attempt adds to `cycle_start`: a manual one is no step of the schedule.
  local uncounted = (A.manual and A.record ~= '') and 1 or 0

  -- The attempt's record numbered as the next one of the delivery: the claim's number unless a
  -- late attempt was logged since (rare: only then is the record decoded).
  local function numbered(n)
    if A.record == '' or n == A.attempt then return A.record end
    local record = cjson.decode(A.record)
    record.number = n
    return cjson.encode(record)
  end

  -- A delivery as history has it, with its attempts: Redis's list, then the last one.
  local function archive_whole(fields)
    local attempts = redis.call('LRANGE', K.attempts, 0, -1)
    local last = redis.call('HGET', K.delivery, F.last_attempt)
    if last and last ~= '' then table.insert(attempts, last) end
    local transient = {F.last_attempt, F.lease_until, F.lease_token, F.traceparent, F.manual,
      F.payload}
    for _, name in ipairs(transient) do
      fields[name] = nil
    end
    archive_delivery(id, fields, attempts)
  end

  if not st[1] then
    -- Gone from Redis: it ended and history has it. A late attempt goes to history with the
    -- delivery as history has it (A.archived, which the caller reads when told -1 here).
    if A.record == '' then return {0, '', int(at)} end
    local d = A.archived
    if d == nil or d == cjson.null then return {-1, '', int(at)} end
    local n = tonumber(d.attempt_count) + 1
    -- Newer than the state it adds to, which history keeps only if so: `at` comes from this
    -- worker's reading of Redis's clock, which may run a few ms behind another's.
    at = math.max(at, (tonumber(d.updated_ms) or 0) + 1)
    d.attempt_count, d.updated_ms = tostring(n), int(at)
    d.cycle_start = int(tonumber(d.cycle_start) + uncounted)
    if delivered_now and d.status ~= S.delivered then
      d.status, d.delivered_ms = S.delivered, int(at)
      d.last_status_code, d.last_error = A.last_status_code, A.last_error
    end
    archive_delivery(id, d, {numbered(n)})
    return {1, '', int(at)}
  end

  local made = tonumber(st[2])
  local record = numbered(made + 1)
  local wh, t = st[5], st[6]
  local queue = K.queue .. wh
  if st[1] ~= S.delivering or st[3] ~= A.token then
    -- Not in flight, or in flight again: then the slot is the new attempt's. Ended since (by a
    -- late 2xx, below, while this attempt was in flight), its place in the queue goes now.
    if st[1] ~= S.delivering then
      if st[1] ~= S.pending then redis.call('ZREM', queue, id) end
      redis.call('ZREM', K.tenant_slots .. t, id)
      redis.call('ZREM', K.tenant_slow_slots .. t, id)
    end
    if record == '' then return {0, '', int(at)} end
    -- Newer than the state it adds to, as above (history keeps a delivery's newest state).
    at = math.max(at, (tonumber(st[10]) or 0) + 1)
    local finished = st[1] ~= S.pending and st[1] ~= S.delivering
    local win = delivered_now and st[1] ~= S.delivered
    local fields = {F.attempt_count, made + 1, F.updated_ms, int(at),
      F.cycle_start, int(tonumber(st[9]) + uncounted)}
    if finished then
      -- An ended delivery keeps its last attempt on the hash: that one joins the list now.
      local last = redis.call('HGET', K.delivery, F.last_attempt)
      if last and last ~= '' then redis.call('RPUSH', K.attempts, last) end
      table.insert(fields, F.last_attempt)
      table.insert(fields, record)
    elseif win then
      table.insert(fields, F.last_attempt)
      table.insert(fields, record)
    else
      redis.call('RPUSH', K.attempts, record)
    end
    -- Pending, it leaves its queue; in flight again, its place there is the slot of the attempt
    -- in flight, which that attempt's settle frees.
    local leaves = win and st[1] ~= S.delivering
    if win then
      for _, v in ipairs({F.status, S.delivered, F.delivered_ms, int(at), F.next_attempt_at, '',
        F.last_status_code, A.last_status_code, F.last_error, A.last_error, F.lease_until, '',
        F.lease_token, ''}) do
        table.insert(fields, v)
      end
      if leaves then redis.call('ZREM', queue, id) end
    end
    redis.call('HSET', K.delivery, unpack(fields))
    if leaves then forget_if_idle(t, wh, true) end
    if finished or win then archive_whole(hash_of(K.delivery)) end
    return {1, '', int(at)}
  end

  -- Frees the delivery's tenant slot; returns whether a claim had found the tenant at its
  -- concurrency since (WAITING, taken out with it). The endpoint's slot is the delivery's place
  -- in its queue (see claim.lua), which it leaves or where it is rescheduled below. A delivery
  -- whose webhook was disabled when claimed holds no slot: it takes no WAITING out, which is for
  -- a slot that frees.
  local function free(slots)
    if not A.holds_slot then
      redis.call('ZREM', slots, id)
      return false
    end
    return redis.call('ZREM', slots, id, WAITING) == 2
  end
  local tenant_waits = free(K.tenant_slots .. t)
  -- The claim said whether the endpoint counted as quick: only a change is written (so a quick
  -- endpoint's flag lapses a day after it was set, and its next attempt sets it again).
  local freed_slow = 0
  if not A.was_quick then freed_slow = redis.call('ZREM', K.tenant_slow_slots .. t, id) end
  if A.quick == true and not A.was_quick then
    redis.call('SET', K.quick, 1, 'EX', A.quick_ttl)
  elseif A.quick == false and A.was_quick then
    redis.call('DEL', K.quick)
  end
  -- The endpoint's concurrency, when this attempt's answer moves it (A.concurrency: from the one
  -- it was claimed at, to the next; nil, the usual case, costs nothing). An increase holds only
  -- if nothing moved it since the claim, and a decrease never raises it: of a round's attempts,
  -- the first to move it does, and the others find it moved.
  if A.concurrency then
    local c = A.concurrency
    local held = tonumber(redis.call('GET', K.concurrency)) or c.from
    if (c.to > c.from and held == c.from) or c.to < held then
      redis.call('SET', K.concurrency, c.to, 'EX', c.ttl)
    end
  end
  local count = made
  if record ~= '' then count = made + 1 end
  local cycle_start = tonumber(st[9]) + uncounted
  local due = nil
  if A.status == S.pending then
    -- A failed manual attempt leaves the delivery due when its schedule had it.
    due = A.manual and (tonumber(redis.call('HGET', K.delivery, F.next_attempt_at)) or at)
      or at + A.delay_ms
  end
  -- A rescheduled attempt joins the delivery's list; the last one is kept on the delivery (one
  -- write fewer) until history has it.
  if due and record ~= '' then redis.call('RPUSH', K.attempts, record) end
  -- One HSET for every field that changes (this script runs once per attempt); the lease is
  -- blanked rather than deleted, which would be one more command.
  local delivered = delivered_now and int(at) or ''
  redis.call('HSET', K.delivery, F.status, A.status, F.attempt_count, count,
    F.last_status_code, A.last_status_code, F.last_error, A.last_error, F.updated_ms, int(at),
    F.next_attempt_at, due and int(due) or '', F.delivered_ms, delivered, F.lease_until, '',
    F.lease_token, '', F.last_attempt, due and '' or record)
  if A.manual then redis.call('HSET', K.delivery, F.cycle_start, int(cycle_start), F.manual, '') end
  local endpoint_waits = false
  if due then
    redis.call('ZADD', queue, due, id)
    endpoint_waits = A.holds_slot and redis.call('ZREM', queue, WAITING) == 1
    redis.call('ZADD', K.endpoints .. t, 'LT', due, wh)
    -- An idle worker sleeps until the first waiting time it last saw; this may be sooner.
    if redis.call('ZADD', K.tenants, 'LT', 'CH', due, t) == 1 then wake() end
  else
    -- The schedule ended: the history writer owns it from here, and lets it go from Redis
    -- once PostgreSQL has it. Records in flight have no TTL: they leave that way, never by
    -- expiring (a managed Redis evicting keys with a TTL would take them otherwise).
    if A.holds_slot then
      endpoint_waits = redis.call('ZREM', queue, id, WAITING) == 2
    else
      redis.call('ZREM', queue, id)
    end
    local attempts = made > 0 and redis.call('LRANGE', K.attempts, 0, -1) or {}
    if record ~= '' then table.insert(attempts, record) end
    archive_delivery(id, {id = id, event_id = st[4], webhook_id = st[5], tenant_id = st[6],
      event_type = st[7], created_at = st[8], cycle_start = int(cycle_start), status = A.status,
      attempt_count = tostring(count), last_status_code = A.last_status_code,
      last_error = A.last_error, updated_ms = int(at), delivered_ms = delivered}, attempts)
  end
  -- An endpoint whose queue this left empty stays in its tenant's set (and the tenant in theirs)
  -- until the next claim that looks at it, at the latest when the lease it was scored by runs
  -- out: that claim lets it go (see claim.lua). Most of the time an endpoint with traffic gets
  -- its next delivery first, and taking it out here would only have it put back.
  if endpoint_waits or tenant_waits or freed_slow > 0 then
    -- Whoever waited for the slot may go now: the endpoint if it was at its concurrency and more
    -- of it is due, the least recently served of those waiting for a slow slot if one freed, and
    -- the tenant if one of those goes, or if it was at its concurrency and one of its endpoints
    -- is due. Nobody waits for most slots that free: that costs no read.
    local endpoints, changed, due = K.endpoints .. t, 0, false
    -- `at`, the worker's estimate of Redis's clock, can be some ms off it either way. Ahead, and a
    -- claim in those ms would pass by whoever goes, were it scored `at`: it is scored by the
    -- earlier of the two. Behind (the settle went a while after it was reckoned), and what became
    -- due since (an endpoint a claim has just scored now, a delivery just accepted) would not look
    -- due, and whoever waits would wait for the first lease to run out: it is due by the later.
    -- Read only when someone waits.
    local clock = time_ms()
    local now, latest = math.min(at, clock), math.max(at, clock)
    if endpoint_waits then
      -- Due: a pending one (scored from 0 on, after the attempts in flight), or one whose worker
      -- died (its lease, below `latest` - A.in_flight, has run out: see claim.lua).
      local function any(from, to)
        return #redis.call('ZRANGE', queue, from, to, 'BYSCORE', 'LIMIT', 0, 1) > 0
      end
      if any(0, int(latest)) or any('-inf', int(latest - A.in_flight)) then
        changed = redis.call('ZADD', endpoints, 'XX', 'LT', 'CH', now, wh)
        due = true
      else
        -- Its next delivery is not due by either clock (scheduled by a reading of Redis's clock
        -- that ran ahead of both): the endpoint, whose slot is free now, and its tenant are looked
        -- at when that delivery is due, not when the first lease runs out. Nothing else will bring
        -- them forward: this settle took the only mark saying that the endpoint waits.
        local next = tonumber(redis.call('ZRANGE', queue, 0, '(+inf', 'BYSCORE', 'LIMIT', 0, 1,
          'WITHSCORES')[2])
        if next then
          changed = redis.call('ZADD', endpoints, 'XX', 'LT', 'CH', next, wh)
            + redis.call('ZADD', K.tenants, 'XX', 'LT', 'CH', next, t)
        end
      end
    end
    if freed_slow > 0 then
      local next = redis.call('ZPOPMIN', K.endpoints_slow .. t)[1]
      if next then
        changed = changed + redis.call('ZADD', endpoints, 'XX', 'LT', 'CH', now, next)
        due = true
      end
    end
    if tenant_waits and not due then
      local soonest = tonumber(redis.call('ZRANGE', endpoints, 0, 0, 'WITHSCORES')[2])
      due = soonest ~= nil and soonest <= latest
      if soonest ~= nil and not due then
        -- Its soonest endpoint is not due by either clock (a claim reckoned its time by a reading
        -- of Redis's clock that ran ahead of both): the tenant, whose slot is free now, is looked
        -- at when that endpoint is, not when its first lease runs out. Nothing else will bring it
        -- forward: this settle took the only mark saying that it waits.
        changed = changed + redis.call('ZADD', K.tenants, 'XX', 'LT', 'CH', soonest, t)
      end
    end
    if due then changed = changed + redis.call('ZADD', K.tenants, 'XX', 'LT', 'CH', now, t) end
    if changed > 0 then wake() end
  end
  if A.endpoint == 'ok' then
    -- A streak the claim did not see began during this attempt: a later success ends it.
    if A.failing then redis.call('DEL', K.failing) end
  elseif A.endpoint == 'fail' then
    redis.call('SET', K.failing, int(at), 'NX')
    redis.call('PEXPIRE', K.failing, A.failing_ttl_ms)
    return {1, redis.call('GET', K.failing), int(at)}
  end
  return {1, '', int(at)}
end

local replies = {}
for i, each in ipairs(A.each) do
  replies[i] = settle(each, setmetatable(each.keys, {__index = K}))
end
return replies
