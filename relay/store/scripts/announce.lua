#!lua flags=allow-oom
-- Counters and presence are written even when Redis is out of memory (allow-oom), which is when
-- on-call needs them most: what was refused, and that the workers are alive (not counted out
-- as gone). What they add is bounded: a fixed set of counter fields, one entry per live worker.
-- KEYS: the counters, the workers. ARGV: the worker (or ''), the time, how long a worker's
-- entry is kept (ms), then pairs of a counter field and what to add to it.
local worker, now_ms, kept_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if worker ~= '' then
  redis.call('ZADD', KEYS[2], now_ms, worker)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - kept_ms)
  redis.call('PEXPIRE', KEYS[2], kept_ms)
end
for i = 4, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
