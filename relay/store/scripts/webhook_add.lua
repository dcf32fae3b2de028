-- Count and add in one script, so that concurrent creates cannot pass the cap together; the
-- request's answer is stored with the webhook (see `Commit`).
-- KEYS: the webhook, the index of all, its tenant's index, the disabled webhooks, the webhooks'
-- version. ARGV: its record, its id, the most a tenant may have, '1' if enabled (else '0'),
-- the commit (JSON), the new version.
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 0 end
commit(cjson.decode(ARGV[5]))
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if ARGV[4] == '0' then redis.call('SADD', KEYS[4], ARGV[2]) end
redis.call('SET', KEYS[5], ARGV[6])
return 1
