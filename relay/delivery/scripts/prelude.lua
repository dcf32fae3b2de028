-- Shared by every script (prepended when loaded): one JSON argument, Redis's own clock.
local A = cjson.decode(ARGV[1])
local K = A.keys
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()
-- Integers as Redis text (Lua would print large numbers in exponent form).
local function int(x) return string.format('%d', x) end
-- Keep a key at least `s` more seconds (a key without a TTL gets one).
local function keep(key, s)
  local ttl = redis.call('TTL', key)
  if ttl ~= -2 and ttl < s then redis.call('EXPIRE', key, s) end
end
-- Tell one idle worker that something became due now; the list stays short.
local function wake()
  redis.call('LPUSH', K.wake, 1)
  redis.call('LTRIM', K.wake, 0, 15)
end
-- Hand a record that reached its end to the history writer (PostgreSQL). Only its kind and id
-- travel: the writer reads the record itself, and lets it go from Redis once it is written.
local function archive(kind, id)
  redis.call('XADD', K.history, '*', 'k', kind, 'i', id)
end
