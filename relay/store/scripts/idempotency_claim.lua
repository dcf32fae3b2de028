-- One atomic step decides what a request with a key may do. Times come from Redis (NOW), so API
-- replicas with different clocks agree on when a lease has lapsed. A lapsed lease means the
-- process holding it died before its write committed (a committed write leaves `done`): the
-- key is claimed again. Records written before runs carried tokens cannot say whether their
-- write landed: those stay unknown. A replay that is to wait for replicas (ARGV[5]) sets its
-- record again as it is: a WAIT after this call then covers the write the record answers, which
-- came before.
-- KEYS: the record. ARGV: the request's fingerprint, the lease in ms, the record's lifetime in
-- seconds, the run's token, '1' for a replay that waits for replicas (else '0').
local raw = redis.call('GET', KEYS[1])
if raw then
  local record = cjson.decode(raw)
  if record.fingerprint ~= ARGV[1] then return {'mismatch'} end
  if record.state == 'done' then
    if ARGV[5] == '1' then redis.call('SET', KEYS[1], raw, 'KEEPTTL') end
    return {'done', record.response}
  end
  if record.state == 'pending' and tonumber(record.lease_until) > NOW then
    return {'running'}
  end
  if not record.run then return {'unknown'} end
end
local pending = cjson.encode({state = 'pending', fingerprint = ARGV[1], run = ARGV[4],
  lease_until = NOW + tonumber(ARGV[2])})
redis.call('SET', KEYS[1], pending, 'EX', ARGV[3])
return {'claimed'}
