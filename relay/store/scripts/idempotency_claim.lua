-- One atomic step decides what a request with a key may do. Times come from Redis (NOW), so API
-- replicas with different clocks agree on when a lease has lapsed. A lapsed lease means the
-- process holding it died before its write committed (a committed write leaves `done`): the
-- key is claimed again. Records written before runs carried tokens cannot say whether their
-- write landed: those stay unknown. A replay that is to wait for replicas sets its record again
-- as it is: a WAIT after this call then covers the write the record answers, which came before.
-- Claims made at once by one process's requests come in one call, each decided in its turn as
-- if alone (a key claimed twice in a call is `running` the second time).
-- KEYS: the records, one a claim. ARGV[1]: the records' lifetime in seconds; then four a claim:
-- the request's fingerprint, the lease in ms, the run's token, and '1' for a replay that waits
-- for replicas (else '0'). Returns each claim's verdict, in order.
local function claim(key, fingerprint, lease_ms, run, waits)
  local raw = redis.call('GET', key)
  if raw then
    local record = cjson.decode(raw)
    if record.fingerprint ~= fingerprint then return {'mismatch'} end
    if record.state == 'done' then
      if waits == '1' then redis.call('SET', key, raw, 'KEEPTTL') end
      return {'done', record.response}
    end
    if record.state == 'pending' and tonumber(record.lease_until) > NOW then
      return {'running'}
    end
    if not record.run then return {'unknown'} end
  end
  local pending = cjson.encode({state = 'pending', fingerprint = fingerprint, run = run,
    lease_until = NOW + tonumber(lease_ms)})
  redis.call('SET', key, pending, 'EX', ARGV[1])
  return {'claimed'}
end

local verdicts = {}
for i, key in ipairs(KEYS) do
  local at = 2 + 4 * (i - 1)
  verdicts[i] = claim(key, ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3])
end
return verdicts
