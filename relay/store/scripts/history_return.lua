-- Held entries go back to the history stream as they were held (with why, which the writer
-- does not read), to be written again: the oldest ARGV[1] of them. Returns how many went.
-- KEYS: the held stream, the history stream.
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
for _, entry in ipairs(entries) do
  redis.call('XADD', KEYS[2], '*', unpack(entry[2]))
  redis.call('XDEL', KEYS[1], entry[1])
end
return #entries
