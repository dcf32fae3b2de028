-- Shared by every script (prepended when loaded): one JSON argument. The scripts that read
-- Redis's own clock get it as NOW, or by `time_ms()`, from the loader (see relay.store.lua).
local A = cjson.decode(ARGV[1])
-- Key names (and key prefixes) come in A.keys, not in KEYS as the store's scripts take them:
-- the claim finds the tenants, endpoints, queues and deliveries it touches as it goes, so no
-- caller could name them up front, and every delivery script shares this one way. Redis runs
-- such scripts on one primary; Redis Cluster, which needs every key in KEYS, is not supported.
local K = A.keys
-- Integers as Redis text (Lua would print large numbers in exponent form).
local function int(x) return string.format('%d', x) end
-- Tell one idle worker that something became due now. The list stays short: idle workers
-- empty it, and past 32 wake-ups nobody took it goes back to 16 (in one trim per 17 pushes,
-- not one per push).
local function wake()
  if redis.call('LPUSH', K.wake, 1) > 32 then redis.call('LTRIM', K.wake, 0, 15) end
end
-- What holds an endpoint's or a tenant's slots in use (its queue, the tenant's set of slots) holds
-- this member too once a claim found them all in use, scored +inf so that it is neither a lease
-- nor due: the settle that frees a slot takes it out in the same ZREM, and so learns, without
-- another read, that someone waits for the slot (see claim.lua).
local WAITING = '~waiting'
-- Hand a record to the history writer (PostgreSQL): its kind, id and the record itself (JSON),
-- so that the writer reads nothing back. Redis lets the record go once PostgreSQL has it.
local function archive(kind, id, record, ...)
  redis.call('XADD', K.history, '*', 'k', kind, 'i', id, 'r', record, ...)
end
-- A delivery as history takes it: its fields (a table, every value text) and its attempts
-- (their JSON records); an empty table would encode as an object, so none is left out.
local function archive_delivery(id, fields, attempts)
  local record = {delivery = fields}
  if #attempts > 0 then record.attempts = attempts end
  archive('d', id, cjson.encode(record))
end
-- A delivery's whole hash as a table (for the rarer transitions, which read it all).
local function hash_of(key)
  local flat = redis.call('HGETALL', key)
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  return fields
end
-- Once an endpoint's queue is empty it leaves its tenant's set (and, if `slow`, the record of
-- its turns at the tenant's slow share), and a tenant with none left leaves the tenants' set
-- (for the scripts that take deliveries out of a queue, whose K names the schedule's keys).
-- Returns whether the tenant left.
local function forget_if_idle(t, wh, slow)
  if redis.call('EXISTS', K.queue .. wh) == 1 then return false end
  redis.call('ZREM', K.endpoints .. t, wh)
  if slow then
    redis.call('ZREM', K.endpoints_slow .. t, wh)
    redis.call('HDEL', K.slow_served .. t, wh)
  end
  if redis.call('EXISTS', K.endpoints .. t) == 1 then return false end
  redis.call('ZREM', K.tenants, t)
  return true
end
