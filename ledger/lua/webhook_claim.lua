-- Take a subscription's due deliveries to send them. Each is leased to this caller: its due
-- time moves to the lease's end, so no other process takes it meanwhile, and a process killed
-- mid-delivery loses nothing: at the lease's end it is due again, under the same id.
-- KEYS[1] due set   KEYS[2] deliveries hash   KEYS[3] attempts hash
-- ARGV[1] the most to take   ARGV[2] lease (ms)
-- Returns {the lease's end (ms, as text), then per delivery: id, event JSON,
-- 'attempts first_attempt_ms' or '' if never tried}.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now_ms + tonumber(ARGV[2])
local out = {string.format('%d', until_ms)}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, did in ipairs(due) do
  local data = redis.call('HGET', KEYS[2], did)
  if data then
    redis.call('ZADD', KEYS[1], until_ms, did)
    out[#out + 1] = did
    out[#out + 1] = data
    out[#out + 1] = redis.call('HGET', KEYS[3], did) or ''
  else
    redis.call('ZREM', KEYS[1], did)
  end
end
return out
