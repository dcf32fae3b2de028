-- pending → delivering, for up to A.limit due deliveries at once.
-- A delivery over its endpoint's concurrency or rate limit is parked instead: it leaves the due
-- set for the endpoint's parked set and costs nothing until a slot frees (settle moves one back)
-- or the endpoint comes up in the wakes set (a lease ran out, a rate window opened).
-- Everything examined is claimed, parked, rescheduled or dropped, so no backlog can hide what
-- is due behind it.

local function free_slots(wh)
  local slots = K.slots .. wh
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', NOW)
  return A.concurrency - redis.call('ZCARD', slots)
end

local function park(id, wh, score, wake_at)
  redis.call('ZREM', K.due, id)
  redis.call('ZADD', K.parked .. wh, score, id)
  redis.call('ZADD', K.wakes, 'LT', wake_at, wh)
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
    redis.call('ZADD', K.wakes, 'LT', first or (NOW + 1000), wh)
  end
end

-- Within one call each endpoint's record and free slots, and each event's payload, are read
-- once: a batch for one endpoint, or one event's fan-out, does not read them per delivery.
local endpoints = {}
local function endpoint(wh)
  local e = endpoints[wh]
  if not e then
    local record = redis.call('GET', K.webhook .. wh)
    local ok, w = false, nil
    if record then ok, w = pcall(cjson.decode, record) end
    e = {record = record, enabled = ok and w.enabled == true,
      rate = ok and w.rate_limit_per_second or nil}
    endpoints[wh] = e
  end
  return e
end
local payloads = {}
local function payload_of(event_id)
  if payloads[event_id] == nil then
    payloads[event_id] = redis.call('HGET', K.event .. event_id, 'payload') or ''
  end
  return payloads[event_id]
end

local sequence = 0
local taken_over = 0
local function try(id, score)
  local d = redis.call('HMGET', K.delivery .. id, 'status', 'attempt_count', 'lease_until',
    'webhook_id', 'event_id', 'cycle_start', 'traceparent')
  local status = d[1]
  if not status or (status ~= 'pending' and status ~= 'delivering') then
    redis.call('ZREM', K.due, id)
    return nil
  end
  if status == 'delivering' and tonumber(d[3]) > NOW then
    redis.call('ZADD', K.due, d[3], id)  -- leased: its lease decides when to look again
    return nil
  end
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
    e.leased = true
  end
  sequence = sequence + 1
  local token = A.owner .. ':' .. int(NOW) .. ':' .. sequence
  redis.call('HSET', K.delivery .. id, 'status', 'delivering', 'lease_until', int(lease),
    'lease_token', token)
  redis.call('ZADD', K.due, lease, id)
  return {id, tonumber(d[2]) + 1, token, tonumber(d[6]), wh, d[5], e.record or '',
    payload_of(d[5]), d[7] or ''}
end

for _, wh in ipairs(redis.call('ZRANGEBYSCORE', K.wakes, '-inf', NOW, 'LIMIT', 0, A.scan)) do
  unpark(wh)
end
local claims = {}
local due = redis.call('ZRANGEBYSCORE', K.due, '-inf', NOW, 'WITHSCORES', 'LIMIT', 0, A.scan)
for i = 1, #due, 2 do
  if #claims >= A.limit then break end
  local claim = try(due[i], tonumber(due[i + 1]))
  if claim then table.insert(claims, claim) end
end
-- A slot set lives as long as the leases in it (each a lease from now).
for wh, e in pairs(endpoints) do
  if e.leased then redis.call('PEXPIRE', K.slots .. wh, A.lease_ms) end
end
-- How long until anything is due: the caller may sleep that long unless woken.
local head = nil
for _, set in ipairs({K.due, K.wakes}) do
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')[2]
  if first and (not head or tonumber(first) < head) then head = tonumber(first) end
end
return {int(NOW), head and int(head - NOW) or -1, claims, taken_over}
