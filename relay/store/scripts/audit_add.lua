-- KEYS: the entry, the marker (or the entry again when there is none), the history stream,
-- then its indexes. ARGV: the entry's record, its id, the retention in seconds, the trimming
-- floor. An entry with a marker is added only by whoever sets the marker first.
if KEYS[2] ~= KEYS[1] and not redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('XADD', KEYS[3], '*', 'k', 'a', 'i', ARGV[2])
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[2])
  redis.call('ZREMRANGEBYLEX', KEYS[i], '-', ARGV[4])
  -- A tenant's index lapses a retention period after its last entry.
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return 1
