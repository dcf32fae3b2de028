-- (new) → pending: an event, its deliveries and their due times. Lists read history, which
-- has the event and its fan-out from the stream entry written here.
-- A fan-out within the store's bound is one call, all or nothing (A.step 'whole'). A larger one
-- is written in steps of that bound, so that no call blocks Redis for long: 'begin' writes the
-- event, its plan (the deliveries still to write, ARGV[3]) and the first chunk, and enters the
-- event in the accepting set; each 'chunk' writes more, skipping any delivery written before;
-- 'finish' takes the event out of the set. An event left there because its writer died is
-- finished from its plan by a retry of the same upstream id, or by a worker's maintenance.
-- A score in the accepting set is when that event last made progress (Redis's clock).

-- Optional fields every delivery of the event carries: its trace and the id of the request
-- that posted it (for its attempts' spans and log lines), and the event's upstream-id key (so
-- that whoever takes the event out of Redis can shorten it without reading the event).
local extra = {}
if A.traceparent ~= '' then
  table.insert(extra, 'traceparent')
  table.insert(extra, A.traceparent)
end
if A.request_id ~= '' then
  table.insert(extra, 'request_id')
  table.insert(extra, A.request_id)
end
if A.upstream_key ~= cjson.null then
  table.insert(extra, 'upstream_key')
  table.insert(extra, A.upstream_key)
end

-- Each delivery joins its endpoint's queue, due now; the endpoint (once per call) and the
-- tenant are to be looked at now (see claim.lua).
local function write(deliveries, skip_written)
  local written, told = 0, {}
  for _, d in ipairs(deliveries) do
    if not (skip_written and redis.call('EXISTS', d.key) == 1) then
      redis.call('HSET', d.key, 'id', d.id, 'event_id', A.id, 'webhook_id', d.webhook_id,
        'tenant_id', A.tenant_id, 'event_type', A.type, 'status', 'pending', 'attempt_count', 0,
        'cycle_start', 0, 'next_attempt_at', int(NOW), 'created_at', A.created_at,
        'updated_ms', int(A.created_ms), unpack(extra))
      redis.call('ZADD', K.queue .. d.webhook_id, NOW, d.id)
      if not told[d.webhook_id] then
        redis.call('ZADD', K.endpoints, 'LT', NOW, d.webhook_id)
        told[d.webhook_id] = true
      end
      written = written + 1
    end
  end
  -- Idle workers are woken only when the tenant's turn moved up: one already due is being
  -- served, or is to be by a worker that has seen so.
  if written > 0 and redis.call('ZADD', K.tenants, 'LT', 'CH', NOW, A.tenant_id) == 1 then
    wake()
  end
end

-- The last step of every accept, whatever its size: from here on the event is whole.
local function finish()
  redis.call('ZREM', K.accepting, A.id)
  redis.call('DEL', K.plan)
end

if A.step == 'chunk' then
  write(A.deliveries, true)
  redis.call('ZADD', K.accepting, 'XX', NOW, A.id)
  return false
end
if A.step == 'finish' then
  finish()
  return false
end

-- 'whole' or 'begin'. An upstream id seen before writes nothing new and returns the first
-- event's id, with 1 if that event is still being accepted. The id's key is set again as it
-- is: WAIT counts the replicas holding this connection's last write, and this write comes
-- after the first event's, so a WAIT after this call also covers the first event.
if A.upstream_key ~= cjson.null then
  local first = redis.call('GET', A.upstream_key)
  if first then
    redis.call('SET', A.upstream_key, first, 'KEEPTTL')
    return {first, redis.call('ZSCORE', K.accepting, first) and 1 or 0}
  end
end
-- Past this backlog PostgreSQL is not keeping up (or is away): refuse new work rather than
-- fill Redis's memory with history.
if A.history_max ~= cjson.null and redis.call('XLEN', K.history) >= A.history_max then
  return redis.error_reply('HISTORY_BACKLOG')
end
-- The request's answer is stored with the first step: from it on, the event exists and is
-- finished from its plan whatever happens to this writer.
commit(A.commit)
if A.upstream_key ~= cjson.null then
  -- Kept while the event is in Redis; `release` shortens it once history has the event.
  redis.call('SET', A.upstream_key, A.id, 'EX', A.ttl)
  redis.call('HSET', K.event, 'upstream_key', A.upstream_key)
end
-- The delivery ids (ARGV[2]) and the plan come as raw JSON: decoding them would cost as much
-- as a chunk. The payload comes as it is (ARGV[5]): inside the JSON argument, decoding it would
-- cost ~9 ms a MiB while every other client waits.
redis.call('HSET', K.event, 'payload', ARGV[5], 'type', A.type, 'tenant_id', A.tenant_id,
  'created_at', A.created_at, 'upstream_id', A.upstream_id, 'deliveries', ARGV[2],
  'live', A.live + 1)
-- The event goes to history at once, with the delivery and endpoint ids of its whole fan-out
-- (ARGV[4]), so lists find them. It leaves Redis once history has it and its last delivery
-- has left: `live` counts its deliveries in Redis and its own entry for history, one each.
-- A large payload stays out of the entry (its size instead): the writer reads many entries in
-- one call, and reads such a payload from the event, which is here until history has it.
if #ARGV[5] <= A.inline_payload_bytes then
  archive('e', A.id, ARGV[4], 'p', ARGV[5])
else
  archive('e', A.id, ARGV[4], 'n', #ARGV[5])
end
write(A.deliveries, false)
if A.step == 'begin' then
  redis.call('SET', K.plan, ARGV[3])
  redis.call('ZADD', K.accepting, NOW, A.id)
end
-- A whole accept is done here: it never entered the accepting set nor wrote a plan. Redis's
-- clock goes back to the caller, who goes by it for a while rather than have each call read it.
return int(NOW)
