#!lua flags=allow-oom
-- An entry of the history stream whose record PostgreSQL refused moves to the held stream, with
-- why, and leaves the writers' stream (acknowledged and deleted) in the same step: it stops
-- holding up every batch after it, and is kept whole. Its record stays in Redis, unreleased.
-- It runs even when Redis is out of memory (the flag above): it moves an entry, it adds none,
-- and a writer it failed would write nothing after it.
-- Held entries are bounded (ARGV[4]): past that many, something refuses every record rather
-- than a few, and the entry stays where it is, so that the writer stops at it and the history
-- backlog's bound (which counts the writers' stream) refuses new events before Redis fills.
-- KEYS: the history stream, the held stream. ARGV: the writers' group, the entry id, why, the
-- bound. Returns 1 when held, 0 when the entry was gone already, -1 at the bound.
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
if entry then
  local fields = {}
  for i = 1, #entry[2], 2 do
    if entry[2][i] ~= 'why' then -- held before: the newer reason stands
      table.insert(fields, entry[2][i])
      table.insert(fields, entry[2][i + 1])
    end
  end
  table.insert(fields, 'why')
  table.insert(fields, ARGV[3])
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return entry and 1 or 0
