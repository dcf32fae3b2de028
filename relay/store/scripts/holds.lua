-- Shared by every script that checks or commits an Idempotency-Key claim. `holds` is the one
-- rule: the record is still the pending claim of this run (whatever its lease says — a run whose
-- lease lapsed may still commit, until a retry or its own failure has taken the key).
local function holds(key, run)
  local raw = redis.call('GET', key)
  if not raw then return false end
  local record = cjson.decode(raw)
  return record.state == 'pending' and record.run == run
end
