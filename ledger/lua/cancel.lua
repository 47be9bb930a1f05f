-- A cancelled campaign: every still-queued message of one batch -> cancelled, with its event.
-- KEYS[1] batch hash   KEYS[2] counts hash   KEYS[3] events stream
-- ARGV[1] campaign id   ARGV[2] event base JSON (campaign fields)   ARGV[3] stream maxlen
-- Returns the number of messages cancelled.
local moved = 0
local records = redis.call('HGETALL', KEYS[1])
for i = 1, #records, 2 do
  local state, dest = split(records[i + 1])
  if state == 'queued' then
    redis.call('HSET', KEYS[1], records[i], 'cancelled|' .. dest)
    local event = cjson.decode(ARGV[2])
    event['message_id'] = ARGV[1] .. '-' .. records[i]
    event['destination'] = dest
    publish(KEYS[3], ARGV[3], cjson.encode(event), 'cancelled')
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('HINCRBY', KEYS[2], 'queued', -moved)
  redis.call('HINCRBY', KEYS[2], 'cancelled', moved)
end
return moved
