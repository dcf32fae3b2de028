-- Shared by every script (prepended when loaded): one JSON argument, and Redis's own clock as
-- NOW in the scripts that read it (store.py adds that line only to those).
local A = cjson.decode(ARGV[1])
local K = A.keys
-- Integers as Redis text (Lua would print large numbers in exponent form).
local function int(x) return string.format('%d', x) end
-- Tell one idle worker that something became due now; the list stays short (trimmed only
-- when it has grown: idle workers empty it).
local function wake()
  if redis.call('LPUSH', K.wake, 1) > 16 then redis.call('LTRIM', K.wake, 0, 15) end
end
-- Hand a record that reached its end to the history writer (PostgreSQL). Only its kind and id
-- travel: the writer reads the record itself, and lets it go from Redis once it is written.
local function archive(kind, id)
  redis.call('XADD', K.history, '*', 'k', kind, 'i', id)
end
