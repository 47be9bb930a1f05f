-- Apply a DIDWW status callback, once, in one round trip: accepted -> sent|failed, or, for a
-- callback that comes late, unconfirmed|unknown -> sent|failed with the event marked late.
-- A callback whose DIDWW id is not indexed is kept (an orphan): record.lua joins it when the
-- worker records the id, or settle.lua matches it to an unknown message by source,
-- destination and time once no message to that pair can still record it.
-- KEYS[1] orphan callback   KEYS[2] events stream   KEYS[3] stats hash
-- ARGV[1] final state (sent|failed)   ARGV[2] event base JSON   ARGV[3] stream maxlen
-- ARGV[4] orphan TTL (s)   ARGV[5] orphan JSON {state, code_id, fragments, t, dt, event}
-- ARGV[6] source   ARGV[7] destination   ARGV[8] DIDWW's time_start (s)   ARGV[9] DIDWW id
-- ARGV[10] id key (16 bytes)   ARGV[11] code_id + 1 (0 for none)   ARGV[12] fragments sent
-- ('' when DIDWW did not say: the record keeps its estimate)
-- ARGV[13] seconds from time_start to time_end   ARGV[14] DIDWW's status (Success, ...)
-- ARGV[15] the trunk whose callback token came with it ('' to settle any trunk's message)
-- Returns {'applied', message id}, {'late', message id}, {'orphan'}, {'duplicate', state?},
-- {'forbidden'} (the message is another trunk's: a token settles only its own trunk's) or
-- {'missing'}
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local cid, index = index_find(ARGV[10])
if not cid then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'callbacks_duplicate', 1)
    return {'duplicate'}
  end
  local ttl = tonumber(ARGV[4])
  redis.call('SET', KEYS[1], ARGV[5], 'EX', ttl)
  local okey = orphans_by_pair(ARGV[6], ARGV[7])
  redis.call('ZADD', okey, tonumber(ARGV[8]), ARGV[9])
  redis.call('EXPIRE', okey, ttl)
  redis.call('ZADD', ORPHANS, now_s, ARGV[9])
  redis.call('HINCRBY', KEYS[3], 'orphans_kept', 1)
  return {'orphan'}
end

local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'trunk')
local bsize = tonumber(h[1] or '')
if not bsize then return {'missing'} end
if ARGV[15] ~= '' and (h[2] or 'default') ~= ARGV[15] then
  redis.call('HINCRBY', KEYS[3], 'callbacks_forbidden', 1)
  return {'forbidden'}
end
local b = math.floor(index / bsize)
local m, off = rec_read(cid, b, index, bsize)
if not m then return {'missing'} end
local from = m.state
if from ~= ACCEPTED and from ~= UNCONFIRMED and from ~= UNKNOWN then
  redis.call('HINCRBY', KEYS[3], 'callbacks_duplicate', 1)
  return {'duplicate', NAMES[from]}
end
local state = CODES[ARGV[1]]
local late = from ~= ACCEPTED
m.state = state
m.code = tonumber(ARGV[11])
if ARGV[12] ~= '' then m.frags = tonumber(ARGV[12]) end
m.t1 = math.floor(tonumber(ARGV[8]))
m.t2 = math.max(0, tonumber(ARGV[13]))
if late then m.flags = with_flag(m.flags, LATE) end
m.flags = with_status(m.flags, ARGV[14])
rec_write(cid, b, off, m)
move(cid, from, state)
local extra = {campaign_id = cid, message_id = cid .. '-' .. index}
if late then
  extra['late'] = true
  extra['previous_state'] = NAMES[from]
end
publish_as(KEYS[2], ARGV[3], ARGV[2], ARGV[1], extra)
redis.call('HINCRBY', KEYS[3], late and 'callbacks_late' or 'callbacks_applied', 1)
maybe_done(cid, now_s)
return {late and 'late' or 'applied', cid .. '-' .. index}
