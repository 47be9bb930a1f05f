-- Create a webhook subscription (with its secret), or give an existing one a new secret. Its
-- created_at is Redis's time, taken here: an event written before it is never delivered to
-- it, and one written after it always is (webhook_schedule.lua's caller reads subscriptions
-- after reading events). A rotated secret keeps signing beside the new one for a grace
-- period, so receivers can switch without refusing a delivery: the stored value is
-- 'new' or 'new previous until_ms'.
-- KEYS[1] subscriptions hash   KEYS[2] secrets hash
-- ARGV[1] subscription id   ARGV[2] its JSON without created_at, or '' to rotate the secret
-- ARGV[3] the secret   ARGV[4] (rotate) how long the previous one still signs (ms)
-- Returns created_at (ms) when created, 1 when rotated, false if the id is taken (create) or
-- unknown (rotate).
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then
  if not exists then return false end
  local previous = string.match(redis.call('HGET', KEYS[2], ARGV[1]) or '', '^(%S+)')
  local value = ARGV[3]
  if previous then
    value = value .. ' ' .. previous .. ' ' .. string.format('%d', now_ms + tonumber(ARGV[4]))
  end
  redis.call('HSET', KEYS[2], ARGV[1], value)
  return 1
end
if exists then return false end
local sub = cjson.decode(ARGV[2])
sub['created_at'] = now_ms
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(sub))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return now_ms
