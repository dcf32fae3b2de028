-- Counts one use in a window; the counter lapses ARGV[1] seconds after its first use.
-- KEYS: the counter. Returns the uses counted so far.
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return used
