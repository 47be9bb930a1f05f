-- Apply a DIDWW status callback: accepted|unknown -> sent|failed, once. A callback whose
-- DIDWW id is not indexed is kept (an orphan): accept.lua joins it when the worker stores the
-- id, or settle.lua matches it to an unknown message by source, destination and time once no
-- 201 can still be on its way.
-- KEYS[1] DIDWW id index   KEYS[2] orphan callback   KEYS[3] batch hash (or any key when
-- the id was not found)   KEYS[4] counts hash   KEYS[5] events stream   KEYS[6] stats hash
-- ARGV[1] index value the caller found ('' for none)   ARGV[2] message field
-- ARGV[3] final state (sent|failed)   ARGV[4] event base JSON   ARGV[5] stream maxlen
-- ARGV[6] orphan TTL (s)   ARGV[7] orphan JSON {state, event, t}   ARGV[8] source
-- ARGV[9] destination   ARGV[10] DIDWW's time_start (s)   ARGV[11] now (s)   ARGV[12] DIDWW id
-- Returns {'applied'}, {'orphan'}, {'duplicate', state?}, {'retry', index value}, {'missing'}
local indexed = redis.call('GET', KEYS[1])
if not indexed then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HINCRBY', KEYS[6], 'callbacks_duplicate', 1)
    return {'duplicate'}
  end
  local ttl = tonumber(ARGV[6])
  redis.call('SET', KEYS[2], ARGV[7], 'EX', ttl)
  local okey = orphans_by_pair(ARGV[8], ARGV[9])
  redis.call('ZADD', okey, tonumber(ARGV[10]), ARGV[12])
  redis.call('EXPIRE', okey, ttl)
  redis.call('ZADD', ORPHANS, tonumber(ARGV[11]), ARGV[12])
  redis.call('HINCRBY', KEYS[6], 'orphans_kept', 1)
  return {'orphan'}
end
if indexed ~= ARGV[1] then return {'retry', indexed} end

local record = redis.call('HGET', KEYS[3], ARGV[2])
if not record then return {'missing'} end
local state, dest, extra = split(record)
if state ~= 'accepted' and state ~= 'unknown' then
  redis.call('HINCRBY', KEYS[6], 'callbacks_duplicate', 1)
  return {'duplicate', state}
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. '|' .. dest .. '|' .. extra)
move(KEYS[4], state, ARGV[3])
publish(KEYS[5], ARGV[5], ARGV[4], ARGV[3])
redis.call('HINCRBY', KEYS[6], 'callbacks_applied', 1)
return {'applied'}
