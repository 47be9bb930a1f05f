-- Record DIDWW's 201: sending|unknown -> accepted, index the DIDWW id, publish `accepted`,
-- and settle the message at once if its callback arrived first (an orphan).
-- KEYS[1] batch hash   KEYS[2] counts hash   KEYS[3] events stream
-- KEYS[4] DIDWW id index   KEYS[5] orphan callback   KEYS[6] stats hash
-- ARGV[1] message field   ARGV[2] DIDWW id   ARGV[3] index value   ARGV[4] index TTL (s)
-- ARGV[5] event base JSON   ARGV[6] stream maxlen   ARGV[7] campaign id   ARGV[8] message id
-- ARGV[9] source
-- Returns {'accepted'}, {'accepted', final_state} after an orphan join, {'skip', state}, {'missing'}
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return {'missing'} end
local state, dest = split(record)
if state ~= 'sending' and state ~= 'unknown' then return {'skip', state} end

redis.call('HSET', KEYS[1], ARGV[1], 'accepted|' .. dest .. '|' .. ARGV[2])
move(KEYS[2], state, 'accepted')
redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])
publish(KEYS[3], ARGV[6], ARGV[5], 'accepted')

local orphan = redis.call('GET', KEYS[5])
if not orphan then return {'accepted'} end
local kept = cjson.decode(orphan)
redis.call('HSET', KEYS[1], ARGV[1], kept['state'] .. '|' .. dest .. '|' .. ARGV[2])
move(KEYS[2], 'accepted', kept['state'])
local event = kept['event']
event['campaign_id'] = ARGV[7]
event['message_id'] = ARGV[8]
publish(KEYS[3], ARGV[6], cjson.encode(event), kept['state'])
redis.call('DEL', KEYS[5])
redis.call('ZREM', orphans_by_pair(ARGV[9], dest), ARGV[2])
redis.call('ZREM', ORPHANS, ARGV[2])
redis.call('HINCRBY', KEYS[6], 'orphans_joined', 1)
return {'accepted', kept['state']}
