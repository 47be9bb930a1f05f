-- A worker process's heartbeat for the batches it holds, on Redis's clock. A batch whose
-- entry is gone was recovered by another worker (recover.lua): the caller lets it go.
-- KEYS[1] in-flight hash   ARGV: fields cid|batch|owner
-- Returns the fields that were gone.
local t = redis.call('TIME')
local gone = {}
for _, field in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], field) == 1 then
    redis.call('HSET', KEYS[1], field, t[1])
  else
    gone[#gone + 1] = field
  end
end
return gone
