-- Apply a DIDWW status callback: accepted|unknown -> sent|failed, once, in one round trip.
-- A callback whose DIDWW id is not indexed is kept (an orphan): accept.lua joins it when the
-- worker stores the id, or settle.lua matches it to an unknown message by source, destination
-- and time once no 201 can still be on its way.
-- KEYS[1] DIDWW id index   KEYS[2] orphan callback   KEYS[3] events stream   KEYS[4] stats hash
-- ARGV[1] final state (sent|failed)   ARGV[2] event base JSON   ARGV[3] stream maxlen
-- ARGV[4] orphan TTL (s)   ARGV[5] orphan JSON {state, event, t}   ARGV[6] source
-- ARGV[7] destination   ARGV[8] DIDWW's time_start (s)   ARGV[9] now (s)   ARGV[10] DIDWW id
-- Returns {'applied', message id}, {'orphan'}, {'duplicate', state?} or {'missing'}
local indexed = redis.call('GET', KEYS[1])
if not indexed then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HINCRBY', KEYS[4], 'callbacks_duplicate', 1)
    return {'duplicate'}
  end
  local ttl = tonumber(ARGV[4])
  redis.call('SET', KEYS[2], ARGV[5], 'EX', ttl)
  local okey = orphans_by_pair(ARGV[6], ARGV[7])
  redis.call('ZADD', okey, tonumber(ARGV[8]), ARGV[10])
  redis.call('EXPIRE', okey, ttl)
  redis.call('ZADD', ORPHANS, tonumber(ARGV[9]), ARGV[10])
  redis.call('HINCRBY', KEYS[4], 'orphans_kept', 1)
  return {'orphan'}
end

-- The index says where the message lives: cid|batch|index.
local cid, batch, index = string.match(indexed, '^(.*)|([^|]*)|([^|]*)$')
local bkey = batch_key(cid, batch)
local record = redis.call('HGET', bkey, index)
if not record then return {'missing'} end
local state, dest, extra = split(record)
if state ~= 'accepted' and state ~= 'unknown' then
  redis.call('HINCRBY', KEYS[4], 'callbacks_duplicate', 1)
  return {'duplicate', state}
end
redis.call('HSET', bkey, index, ARGV[1] .. '|' .. dest .. '|' .. extra)
move(counts_key(cid), state, ARGV[1])
local event = cjson.decode(ARGV[2])
event['campaign_id'] = cid
event['message_id'] = cid .. '-' .. index
publish(KEYS[3], ARGV[3], cjson.encode(event), ARGV[1])
redis.call('HINCRBY', KEYS[4], 'callbacks_applied', 1)
return {'applied', cid .. '-' .. index}
