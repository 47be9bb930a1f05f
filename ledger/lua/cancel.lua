-- A cancelled campaign: every still-queued message of one batch -> cancelled, with its event.
-- KEYS[1] events stream
-- ARGV[1] campaign id   ARGV[2] batch   ARGV[3] event base JSON   ARGV[4] stream maxlen
-- Returns the number of messages cancelled.
local t = redis.call('TIME')
local cid, b = ARGV[1], tonumber(ARGV[2])
local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'source', 'references')
local data = redis.call('GET', batch_key(cid, b))
if not h[1] or not data then return 0 end
local bsize, moved = tonumber(h[1]), 0
for i = 0, #data / R - 1 do
  if string.byte(data, i * R + 1) == QUEUED then
    local m = rec_unpack(string.sub(data, i * R + 1, i * R + R))
    m.state = CANCELLED
    rec_write(cid, b, i * R, m)
    local index = b * bsize + i
    local e = message_event(ARGV[3], 'cancelled', cid, index, num(m.dest), h[2],
      reference_of(h[3], cid, b, index))
    publish(KEYS[1], ARGV[4], cjson.encode(e))
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('HINCRBY', counts_key(cid), 'queued', -moved)
  redis.call('HINCRBY', counts_key(cid), 'cancelled', moved)
  maybe_done(cid, tonumber(t[1]))
end
return moved
