-- Reserve the trunk's next send slot (GCRA without burst): slots are spaced by the
-- interval across every worker, on Redis's clock so hosts' clocks do not matter.
-- KEYS[1] the next free slot (microseconds since the epoch)
-- ARGV[1] interval between slots (us)   ARGV[2] how far ahead a slot may be reserved (us)
-- Returns {1, wait_us}: reserved, post after wait_us; {0, retry_us}: full, ask again later.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local wait = slot - now
if wait > tonumber(ARGV[2]) then
  return {0, wait - tonumber(ARGV[2])}
end
redis.call('SET', KEYS[1], string.format('%d', slot + interval), 'PX', math.floor((wait + interval) / 1000) + 1000)
return {1, wait}
