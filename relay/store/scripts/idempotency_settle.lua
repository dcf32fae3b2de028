-- Settles a claim only while this run holds it: to ARGV[2], or deleted when that is empty.
-- KEYS: the record. ARGV: the run's token, the record to set (or '').
if not holds(KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return 1
