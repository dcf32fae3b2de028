-- Retention for the list indexes, one bounded chunk at a time: the global indexes, then a slice
-- of the per-tenant and per-webhook ones from A.cursor (an SSCAN cursor). Each index loses at
-- most A.per_index entries per call, so no call blocks Redis for long, and the caller carries
-- on from the returned cursor. Replies {next cursor ('0' when a pass ends), entries removed}.
local removed = 0
local function trim(index)
  local floor = string.find(index, K.event_prefix, 1, true) == 1 and A.event_floor
    or A.delivery_floor
  local old = redis.call('ZRANGEBYLEX', index, '-', floor, 'LIMIT', 0, A.per_index)
  if #old > 0 then removed = removed + redis.call('ZREM', index, unpack(old)) end
end
if A.cursor == '0' then
  trim(K.events)
  trim(K.deliveries)
end
local scan = redis.call('SSCAN', K.indexes, A.cursor, 'COUNT', A.count)
for _, index in ipairs(scan[2]) do
  trim(index)
  if redis.call('EXISTS', index) == 0 then redis.call('SREM', K.indexes, index) end
end
return {scan[1], removed}
