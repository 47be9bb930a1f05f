-- Claim a queued message for sending: queued -> sending, unless the trunk is halted or
-- backing off, the campaign is paused or cancelled, or the message's time to live has run out.
-- KEYS[1] batch hash   KEYS[2] campaign hash   KEYS[3] counts hash
-- KEYS[4] halt flag    KEYS[5] events stream   KEYS[6] posted-per-second counter
-- KEYS[7] backoff flag
-- ARGV[1] message field   ARGV[2] event base JSON   ARGV[3] stream maxlen   ARGV[4] now (s)
-- ARGV[5] owner (the worker process), kept in the record so a lost worker's claims are found
-- Returns {outcome} or {'skip', state};
-- outcome: claimed|expired|cancelled|paused|halted|backoff|missing
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return {'missing'} end
local state, dest = split(record)
if state ~= 'queued' then return {'skip', state} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'halted'} end
if redis.call('EXISTS', KEYS[7]) == 1 then return {'backoff'} end

local campaign = redis.call('HMGET', KEYS[2], 'state', 'expires_at')
if campaign[1] == 'cancelled' then
  redis.call('HSET', KEYS[1], ARGV[1], 'cancelled|' .. dest)
  move(KEYS[3], 'queued', 'cancelled')
  publish(KEYS[5], ARGV[3], ARGV[2], 'cancelled')
  return {'cancelled'}
end
if campaign[1] == 'paused' then return {'paused'} end
if campaign[2] and tonumber(campaign[2]) <= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], ARGV[1], 'expired|' .. dest)
  move(KEYS[3], 'queued', 'expired')
  publish(KEYS[5], ARGV[3], ARGV[2], 'expired')
  return {'expired'}
end

redis.call('HSET', KEYS[1], ARGV[1], 'sending|' .. dest .. '|' .. ARGV[4] .. '@' .. ARGV[5])
move(KEYS[3], 'queued', 'sending')
redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], 120)
return {'claimed'}
