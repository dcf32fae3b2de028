-- Counts one use of each KEYS[i] in its window, in turn (a key may come more than once: uses
-- made at once, by requests of the same token, counted in one call); a counter lapses ARGV[1]
-- seconds after its first use. Returns each use's count so far, in order.
local counts = {}
for i, key in ipairs(KEYS) do
  local used = redis.call('INCR', key)
  if used == 1 then redis.call('EXPIRE', key, ARGV[1]) end
  counts[i] = used
end
return counts
