-- Re-encrypts one record only if nobody changed it meanwhile; its expiry stays as it was.
-- KEYS: the record. ARGV: the record as read, the record to set.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
