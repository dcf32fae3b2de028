-- At most once a minute per token, note the time of use (the read that decides is a plain
-- MGET with the record: a request pays one command). The note lives as long as the record (an
-- expiring token's keys have a TTL; a revoke deletes both, and then nothing is noted).
-- KEYS: the token's record, its note of use. ARGV: the time of use.
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return end
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
end
