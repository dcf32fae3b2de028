-- pending → delivering, for up to A.limit due deliveries at once.
-- A delivery over its endpoint's concurrency or rate limit is parked instead: it leaves the due
-- set for the endpoint's parked set and costs nothing until a slot frees (settle moves one back)
-- or the endpoint comes up in the wakes set (a lease ran out, a rate window opened).
-- Everything examined is claimed, parked, rescheduled or dropped, so no backlog can hide what
-- is due behind it.

-- When the next delivery is due, and when the next endpoint wakes (Redis's clock, ms): the
-- caller may sleep until then unless woken. Everything this call reads or reschedules ahead of
-- NOW counts.
local head, wake_head = nil, nil
local function later(at)
  at = tonumber(at)
  if at and at > NOW and (not head or at < head) then head = at end
end
local function later_wake(at)
  at = tonumber(at)
  if at and at > NOW and (not wake_head or at < wake_head) then wake_head = at end
end

-- A lease whose worker died stays in its endpoint's slots until it is taken over (and freed
-- by the attempt that takes it over): it is counted out only when the set looks full.
local function free_slots(wh)
  local slots = K.slots .. wh
  local used = redis.call('ZCARD', slots)
  if used >= A.concurrency then
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', NOW)
    used = redis.call('ZCARD', slots)
  end
  return A.concurrency - used
end

local function park(id, wh, score, wake_at)
  redis.call('ZREM', K.due, id)
  redis.call('ZADD', K.parked .. wh, score, id)
  redis.call('ZADD', K.wakes, 'LT', wake_at, wh)
  later_wake(wake_at)
end

local function unpark(wh)
  redis.call('ZREM', K.wakes, wh)
  local parked = K.parked .. wh
  local free = free_slots(wh)
  if free > 0 then
    for _, id in ipairs(redis.call('ZRANGE', parked, 0, free - 1)) do
      redis.call('ZREM', parked, id)
      redis.call('ZADD', K.due, NOW, id)
    end
  end
  if redis.call('EXISTS', parked) == 1 then
    local first = redis.call('ZRANGE', K.slots .. wh, 0, 0, 'WITHSCORES')[2]
    local at = first or (NOW + 1000)
    redis.call('ZADD', K.wakes, 'LT', at, wh)
    later_wake(at)
  end
end

-- Within one call each endpoint's record and free slots, and each event's payload, are read
-- once: a batch for one endpoint, or one event's fan-out, does not read them per delivery.
local endpoints = {}
local function endpoint(wh)
  local e = endpoints[wh]
  if not e then
    local got = redis.call('MGET', K.webhook .. wh, K.failing .. wh)
    local record = got[1]
    local ok, w = false, nil
    if record then ok, w = pcall(cjson.decode, record) end
    e = {record = record, enabled = ok and w.enabled == true,
      rate = ok and w.rate_limit_per_second or nil, failing = got[2] and 1 or 0}
    endpoints[wh] = e
  end
  return e
end
-- Each event's payload is in the reply once, however many of its deliveries are claimed; and
-- once the payloads in it reach A.payload_bytes, a delivery of another event is not claimed but
-- left due for the next call. Without the bound a reply, and the time Redis spends building it
-- while every other client waits, grows with the bodies and fan-outs that are due.
local payloads, payload_bytes, full = {}, 0, false
local function payload_fits(event_id)
  if payloads[event_id] or payload_bytes == 0 then return true end
  local size = redis.call('HSTRLEN', K.event .. event_id, 'payload')
  full = payload_bytes + size > A.payload_bytes
  return not full
end
local events = {}
local function add_payload(event_id)
  if payloads[event_id] then return end
  payloads[event_id] = redis.call('HGET', K.event .. event_id, 'payload') or ''
  payload_bytes = payload_bytes + #payloads[event_id]
  table.insert(events, event_id)
  table.insert(events, payloads[event_id])
end

local sequence = 0
local taken_over = 0
-- Due, but with no record: evicted, or lost by a Redis that had not persisted it. Nothing says
-- where it goes any more, so it leaves the due set, and the worker reports it.
local missing = {}
local function try(id, score)
  local d = redis.call('HMGET', K.delivery .. id, 'status', 'attempt_count', 'lease_until',
    'webhook_id', 'event_id', 'cycle_start', 'traceparent', 'request_id')
  local status = d[1]
  if not status then table.insert(missing, id) end
  if not status or (status ~= 'pending' and status ~= 'delivering') then
    redis.call('ZREM', K.due, id)
    return nil
  end
  if status == 'delivering' and tonumber(d[3]) > NOW then
    redis.call('ZADD', K.due, d[3], id)  -- leased: its lease decides when to look again
    later(d[3])
    return nil
  end
  if not payload_fits(d[5]) then return nil end
  if status == 'delivering' then
    -- Its worker died or stalled past the lease: another attempt takes over.
    taken_over = taken_over + 1
  end
  local wh = d[4]
  local e = endpoint(wh)
  local lease = NOW + A.lease_ms
  if e.enabled then
    if e.free == nil then e.free = free_slots(wh) end
    if e.free <= 0 then
      local first = redis.call('ZRANGE', K.slots .. wh, 0, 0, 'WITHSCORES')[2]
      park(id, wh, score, first)
      return nil
    end
    local rate = e.rate
    if type(rate) == 'number' then
      local second = math.floor(NOW / 1000)
      local window = K.rate .. wh .. ':' .. int(second)
      if tonumber(redis.call('GET', window) or '0') >= rate then
        park(id, wh, score, (second + 1) * 1000)
        return nil
      end
      redis.call('INCR', window)
      redis.call('EXPIRE', window, 2)
    end
    redis.call('ZADD', K.slots .. wh, lease, id)
    e.free = e.free - 1
  end
  sequence = sequence + 1
  local token = A.owner .. ':' .. int(NOW) .. ':' .. sequence
  redis.call('HSET', K.delivery .. id, 'status', 'delivering', 'lease_until', int(lease),
    'lease_token', token)
  redis.call('ZADD', K.due, lease, id)
  later(lease)
  add_payload(d[5])
  return {id, tonumber(d[2]) + 1, token, tonumber(d[6]), wh, d[5], e.record or '', d[7] or '',
    e.failing, d[8] or ''}
end

-- Both sets are read by rank, one entry past the scan: what is due comes first, and the first
-- entry that is not says when to look again, without another read. The wakes set only when the
-- caller asks (when a wake it knows of has come, and now and then for those others made).
if A.wakes then
  local wakes = redis.call('ZRANGE', K.wakes, 0, A.scan, 'WITHSCORES')
  for i = 1, #wakes, 2 do
    if tonumber(wakes[i + 1]) > NOW then
      later_wake(wakes[i + 1])
      break
    end
    unpark(wakes[i])
  end
end
local claims = {}
local due = redis.call('ZRANGE', K.due, 0, A.scan, 'WITHSCORES')
for i = 1, #due, 2 do
  if #claims >= A.limit then break end
  local score = tonumber(due[i + 1])
  if score > NOW then
    later(score)
    break
  end
  local claim = try(due[i], score)
  if claim then table.insert(claims, claim) end
  if full then break end
end
-- Past the payload bound what is left is due now.
return {int(NOW), full and 0 or head and int(head - NOW) or -1, claims, taken_over,
  wake_head and int(wake_head - NOW) or -1, events, missing}
