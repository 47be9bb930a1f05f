-- Move one message from one of the given states to another, publishing an event if asked.
-- KEYS[1] batch hash   KEYS[2] counts hash   KEYS[3] events stream
-- ARGV[1] message field   ARGV[2] allowed source states, comma separated   ARGV[3] target
-- ARGV[4] new extra ('' for none)   ARGV[5] event base JSON ('' for no event)
-- ARGV[6] stream maxlen
-- Returns {'moved', from_state}, {'skip', state} or {'missing'}
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return {'missing'} end
local state, dest = split(record)
local allowed = false
for source in string.gmatch(ARGV[2], '[^,]+') do
  if source == state then allowed = true end
end
if not allowed then return {'skip', state} end

local value = ARGV[3] .. '|' .. dest
if ARGV[4] ~= '' then value = value .. '|' .. ARGV[4] end
redis.call('HSET', KEYS[1], ARGV[1], value)
move(KEYS[2], state, ARGV[3])
if ARGV[5] ~= '' then publish(KEYS[3], ARGV[6], ARGV[5], ARGV[3]) end
return {'moved', state}
