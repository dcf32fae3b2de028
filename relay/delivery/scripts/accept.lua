-- (new) → pending: events, their deliveries and their due times. Lists read history, which
-- has each event and its fan-out from the stream entry written here.
-- One call takes the first step of each event of a group (A.events, each E with its four raw
-- arguments from ARGV[2] on: a batch of small events is one call). A fan-out within the
-- store's bound is one step, all or nothing (E.step 'whole'). A larger one is written in steps
-- of that bound, so that no call blocks Redis for long: 'begin' writes the event, its plan (the
-- deliveries still to write) and the first chunk, and enters the event in the accepting set;
-- each 'chunk' call (A.step) writes more of one event (A.event), skipping any delivery written
-- before; 'finish' takes it out of the set. An event left there because its writer died is
-- finished from its plan by a retry of the same upstream id, or by a worker's maintenance.
-- A score in the accepting set is when that event last made progress (Redis's clock).

-- Optional fields every delivery of an event carries: its trace and the id of the request
-- that posted it (for its attempts' spans and log lines), and the event's upstream-id key (so
-- that whoever takes the event out of Redis can shorten it without reading the event).
local function extra_fields(E)
  local extra = {}
  if E.traceparent ~= '' then
    table.insert(extra, F.traceparent)
    table.insert(extra, E.traceparent)
  end
  if E.request_id ~= '' then
    table.insert(extra, F.request_id)
    table.insert(extra, E.request_id)
  end
  if E.upstream_key ~= cjson.null then
    table.insert(extra, F.upstream_key)
    table.insert(extra, E.upstream_key)
  end
  return extra
end

-- Each delivery joins its endpoint's queue, due now; the endpoint and the tenant are to be
-- looked at now (see claim.lua), which is said once per call for each: NOW is the same for
-- every event of the call, so saying it again would change nothing (and cost a command per
-- event of a gathered call). `copy`, if given, is the payload of an event whose only delivery
-- this is: small, it goes with the delivery, which the claim reads anyway.
local told_endpoints, told_tenants = {}, {}
local function write(E, skip_written, copy)
  local extra = extra_fields(E)
  if copy then
    table.insert(extra, F.payload)
    table.insert(extra, copy)
  end
  local written = 0
  for _, d in ipairs(E.deliveries) do
    if not (skip_written and redis.call('EXISTS', d.key) == 1) then
      redis.call('HSET', d.key, F.id, d.id, F.event_id, E.id, F.webhook_id, d.webhook_id,
        F.tenant_id, E.tenant_id, F.event_type, E.type, F.status, S.pending, F.attempt_count, 0,
        F.cycle_start, 0, F.next_attempt_at, int(NOW), F.created_at, E.created_at,
        F.updated_ms, int(E.created_ms), unpack(extra))
      redis.call('ZADD', K.queue .. d.webhook_id, NOW, d.id)
      if not told_endpoints[d.webhook_id] then
        redis.call('ZADD', E.keys.endpoints, 'LT', NOW, d.webhook_id)
        told_endpoints[d.webhook_id] = true
      end
      written = written + 1
    end
  end
  -- Idle workers are woken only when the tenant's turn moved up: one already due is being
  -- served, or is to be by a worker that has seen so.
  if written > 0 and not told_tenants[E.tenant_id] then
    told_tenants[E.tenant_id] = true
    if redis.call('ZADD', K.tenants, 'LT', 'CH', NOW, E.tenant_id) == 1 then wake() end
  end
end

if A.step == 'chunk' then
  write(A.event, true)
  redis.call('ZADD', K.accepting, 'XX', NOW, A.event.id)
  return false
end
if A.step == 'finish' then
  -- The last step of every accept in steps: from here on the event is whole.
  redis.call('ZREM', K.accepting, A.event.id)
  redis.call('DEL', A.event.keys.plan)
  return false
end

-- What the first steps check, read in one command for the call (nothing else runs
-- meanwhile): the webhooks' version, if an event's plan is checked against it, and the
-- request's token record, if the caller asks (see below).
local current = {}
local function read_current()
  local names = {}
  for _, E in ipairs(A.events) do
    if E.fan_out_version ~= cjson.null then
      table.insert(names, K.webhooks_version)
      break
    end
  end
  if A.token_fingerprint ~= cjson.null then table.insert(names, K.token) end
  if #names == 0 then return end
  local values = redis.call('MGET', unpack(names))
  for i, name in ipairs(names) do current[name] = values[i] end
end
read_current()
local webhooks_version = current[K.webhooks_version] or '0'

-- The first step of event E ('whole' or 'begin'), with its delivery ids and its plan (raw
-- JSON: decoding them would cost as much as a chunk), its history record and its payload.
-- What came of it: 'ok' (written), {first id, 1 if that one is still being accepted} for a
-- repeated upstream id, 'stale' when the webhooks changed since its fan-out was planned, or
-- 'backlog' when history is too far behind; only 'ok' wrote anything.
local function begin(E, delivery_ids, plan, record, payload)
  -- An upstream id seen before writes nothing new and returns the first event's id. The id's
  -- key is set again as it is: WAIT counts the replicas holding this connection's last write,
  -- and this write comes after the first event's, so a WAIT after this call also covers it.
  if E.upstream_key ~= cjson.null then
    local first = redis.call('GET', E.upstream_key)
    if first then
      redis.call('SET', E.upstream_key, first, 'KEEPTTL')
      return {first, redis.call('ZSCORE', K.accepting, first) and 1 or 0}
    end
  end
  -- The caller planned the fan-out from its copy of the tenant's webhooks at this version of
  -- them: changed since (anywhere), the caller reads them again and plans again.
  if E.fan_out_version ~= cjson.null and webhooks_version ~= E.fan_out_version then
    return 'stale'
  end
  -- Past this backlog PostgreSQL is not keeping up (or is away): refuse new work rather than
  -- fill Redis's memory with history.
  if A.history_max ~= cjson.null and redis.call('XLEN', K.history) >= A.history_max then
    return 'backlog'
  end
  -- The request's answer is stored with the first step: from it on, the event exists and is
  -- finished from its plan whatever happens to this writer.
  commit(E.commit)
  if E.upstream_key ~= cjson.null then
    -- Kept while the event is in Redis; `release` shortens it once history has the event.
    redis.call('SET', E.upstream_key, E.id, 'EX', A.ttl)
    redis.call('HSET', E.keys.event, EVENT.upstream_key, E.upstream_key)
  end
  -- The payload comes as it is: inside the JSON argument, decoding it would cost ~9 ms a MiB
  -- while every other client waits.
  redis.call('HSET', E.keys.event, EVENT.payload, payload, EVENT.type, E.type,
    EVENT.tenant_id, E.tenant_id, EVENT.created_at, E.created_at,
    EVENT.upstream_id, E.upstream_id, EVENT.deliveries, delivery_ids, EVENT.live, E.live + 1)
  -- The event goes to history at once, with the delivery and endpoint ids of its whole fan-out
  -- (`record`), so lists find them. It leaves Redis once history has it and its last delivery
  -- has left: `live` counts its deliveries in Redis and its own entry for history, one each.
  -- A large payload stays out of the entry (its size instead): the writer reads many entries
  -- in one call, and reads such a payload from the event, which is here until history has it.
  if #payload <= A.inline_payload_bytes then
    archive('e', E.id, record, 'p', payload)
  else
    archive('e', E.id, record, 'n', #payload)
  end
  write(E, false, (E.live == 1 and #payload <= A.inline_payload_bytes) and payload or nil)
  if E.step == 'begin' then
    redis.call('SET', E.keys.plan, plan)
    redis.call('ZADD', K.accepting, NOW, E.id)
  end
  return 'ok'
end

-- Redis's clock goes back to the caller first, who goes by it for a while rather than have
-- each call read it; then what came of each event, in order.
local replies = {int(NOW)}
-- The record of the token the request authenticated by, as it was then (its SHA-1), when the
-- caller went by it: gone or changed since (revoked), nothing is written, not even a repeat's
-- answer learnt, and the caller authenticates again ('token' for every event).
if A.token_fingerprint ~= cjson.null
  and redis.sha1hex(current[K.token] or '') ~= A.token_fingerprint then
  for i = 1, #A.events do replies[i + 1] = 'token' end
  return replies
end
for i, E in ipairs(A.events) do
  local at = 2 + 4 * (i - 1)
  replies[i + 1] = begin(E, ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3])
end
return replies
