-- Prepended (after holds.lua) to a script whose write answers a request, with idempotency.py's
-- constants in its placeholders: `commit(c)` writes nothing and fails unless `c`
-- (key, run, record; nil or null without a key) still holds its claim, then stores the answer.
-- Call it after every early return that writes nothing, before the first write. For one step of
-- a request written in several (`c.items`: see `Held.item`) it stores, instead of the answer,
-- what the step made; the answer is stored once every step is done.
local function commit(c)
  if c == nil or c == cjson.null then return end
  if not holds(c.key, c.run) then
    error({err = '$CLAIM_MOVED a later request with this Idempotency-Key took it over'})
  end
  if c.items then
    redis.call('HSET', c.items, c.item, c.made)
    redis.call('EXPIRE', c.items, $KEEP_SECONDS)
  else
    redis.call('SET', c.key, c.record, 'KEEPTTL')
  end
end
