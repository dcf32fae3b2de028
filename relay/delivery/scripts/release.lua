#!lua flags=allow-oom
-- Records the history writer has committed to PostgreSQL (events, deliveries, audit entries)
-- leave Redis, and their stream entries are acknowledged and deleted, in one step. A delivery
-- leaves only if it is still in the state that was written (same status and `updated_ms`): one
-- retried meanwhile stays in flight, and comes back to the writer when it ends again. An event
-- leaves when the last holder of its `live` count lets go: its deliveries in Redis and its own
-- entry, which another writer may be writing at the same time (so the event stays readable
-- until PostgreSQL has it, whichever writer commits first).
-- It runs even when Redis is out of memory (the flag above): it only lets go of what history
-- holds (its one other write, an event's `live` count, shrinks), and it is how a Redis filled
-- by records waiting for history gets room back. Refused, a full Redis could never drain.

-- Holders of each event let go in this batch, counted out together (an event and its delivery
-- often end up in one batch): one HINCRBY per event. The last holder takes the event (and
-- shortens its upstream id's memory: history answers for it from now on, after a short
-- overlap). An event already gone counts from 0 here: the key HINCRBY makes is dropped at once.
-- A batch that lets go of an event's own entry and of every delivery of its fan-out (A.events
-- names how many) is its last holder without counting: the event goes with no HINCRBY. Each
-- holder counts once, however many of its entries the batch has.
local letting_go = {}
local function let_go(event, holder, upstream, ...)
  local g = letting_go[event]
  if not g then
    g = {n = 0, keys = {}, held = {}}
    letting_go[event] = g
  end
  if g.held[holder] then return false end
  g.held[holder] = true
  g.n, g.upstream = g.n + 1, g.upstream or upstream
  for _, key in ipairs({...}) do table.insert(g.keys, key) end
  return true
end

for _, e in ipairs(A.events) do
  local event = K.event .. e[1]
  let_go(event, '', e[2] ~= '' and e[2] or nil)
  letting_go[event].holders = e[3] + 1
end
for _, a in ipairs(A.audits) do
  redis.call('DEL', K.audit .. a[1])
  redis.call('ZREM', K.audits, a[1])
  if a[2] ~= '' then redis.call('ZREM', K.tenant_audit .. a[2], a[1]) end
end
local released = 0
for _, d in ipairs(A.deliveries) do
  local key = K.delivery .. d[1]
  local st = redis.call('HMGET', key, F.status, F.updated_ms, F.event_id, F.upstream_key)
  if st[1] and st[1] == d[2] and st[2] == d[3] then
    if let_go(K.event .. st[3], d[1], st[4], key, key .. K.attempts_suffix) then
      released = released + 1
    end
  end
end
-- What leaves goes in one DEL for the batch (in steps that keep within what unpack takes).
local gone = {}
for event, g in pairs(letting_go) do
  if g.n == g.holders or redis.call('HINCRBY', event, EVENT.live, -g.n) <= 0 then
    if g.upstream then redis.call('EXPIRE', g.upstream, A.upstream_grace) end
    table.insert(gone, event)
  end
  for _, key in ipairs(g.keys) do table.insert(gone, key) end
end
for i = 1, #gone, 1000 do redis.call('DEL', unpack(gone, i, math.min(i + 999, #gone))) end
if #A.entries > 0 then
  redis.call('XACK', K.history, K.group, unpack(A.entries))
  redis.call('XDEL', K.history, unpack(A.entries))
end
return released
