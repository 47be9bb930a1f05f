-- Apply a DIDWW status callback: accepted|unknown -> sent|failed, once. A callback whose
-- DIDWW id is not indexed either settles an unknown message that matches it by source,
-- destination and time (its 201 was lost), or is kept as an orphan for accept.lua to join.
-- KEYS[1] DIDWW id index   KEYS[2] orphan callback   KEYS[3] batch hash (or any key when
-- the id was not found)   KEYS[4] counts hash   KEYS[5] events stream   KEYS[6] stats hash
-- ARGV[1] index value the caller found ('' for none)   ARGV[2] message field
-- ARGV[3] final state (sent|failed)   ARGV[4] event base JSON   ARGV[5] stream maxlen
-- ARGV[6] orphan TTL (s)   ARGV[7] orphan JSON {state, event}   ARGV[8] source
-- ARGV[9] destination   ARGV[10] DIDWW's time_start (s)   ARGV[11] match window (s)
-- ARGV[12] DIDWW id TTL (s)   ARGV[13] now (s)   ARGV[14] the DIDWW id
-- Returns {'applied'}, {'matched'}, {'orphan'}, {'duplicate', state?}, {'retry', index
-- value}, {'missing'}
local indexed = redis.call('GET', KEYS[1])
if not indexed then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HINCRBY', KEYS[6], 'callbacks_duplicate', 1)
    return {'duplicate'}
  end
  local src, dst, t = ARGV[8], ARGV[9], tonumber(ARGV[10])
  local ukey = unknown_by_pair(src, dst)
  local found = nearest(ukey, t, tonumber(ARGV[11]), function(member)
    local cid, batch, index = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
    local record = redis.call('HGET', batch_key(cid, batch), index)
    return record ~= false and string.sub(record, 1, 8) == 'unknown|'
  end)
  if found then
    redis.call('ZREM', ukey, found)
    local cid, batch, index = string.match(found, '^(.*)|([^|]*)|([^|]*)$')
    local m = {cid = cid, batch = batch, index = index, dest = dst}
    local cb = {id = ARGV[14], state = ARGV[3], event = cjson.decode(ARGV[4])}
    settle_unknown(m, cb, {stream = KEYS[5], maxlen = ARGV[5], didww_ttl = ARGV[12]})
    return {'matched'}
  end
  local ttl, now = tonumber(ARGV[6]), tonumber(ARGV[13])
  local id = ARGV[14]
  redis.call('SET', KEYS[2], ARGV[7], 'EX', ttl)
  local okey = orphans_by_pair(src, dst)
  redis.call('ZADD', okey, t, id)
  redis.call('EXPIRE', okey, ttl)
  redis.call('ZREMRANGEBYSCORE', ORPHANS, '-inf', now - ttl)
  redis.call('ZADD', ORPHANS, now, id)
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
