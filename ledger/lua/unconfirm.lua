-- Messages accepted longer ago than the callback timeout, with no callback yet, become
-- unconfirmed (a final state with its event); a callback that comes later still settles
-- them (callback.lua). Batches are found through the accepting set, scored by their oldest
-- acceptance. Given a campaign (ARGV[5], with its batch count ARGV[6]), every accepted message
-- of that campaign becomes unconfirmed now, whatever its age (a purge, which must not leave
-- messages waiting for callbacks of a campaign that is gone).
-- KEYS[1] accepting set   KEYS[2] events stream
-- ARGV[1] callback timeout (s)   ARGV[2] stream maxlen   ARGV[3] event base JSON
-- ARGV[4] most batches to look at   ARGV[5] campaign id or ''   ARGV[6] its batches
-- Returns the number of messages that became unconfirmed.
local now = tonumber(redis.call('TIME')[1])
local limit = now - tonumber(ARGV[1])
local changed = 0
local due
if ARGV[5] and ARGV[5] ~= '' then
  limit = now
  due = {}
  for b = 0, tonumber(ARGV[6]) - 1 do due[#due + 1] = ARGV[5] .. '|' .. b end
else
  due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit, 'LIMIT', 0, ARGV[4])
end
for _, member in ipairs(due) do
  local cid, b = string.match(member, '^(.*)|(%d+)$')
  b = tonumber(b)
  local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'source', 'trunk',
    'references')
  local data = redis.call('GET', batch_key(cid, b))
  local oldest = nil
  if h[1] and data then
    local bsize = tonumber(h[1])
    for i = 0, #data / R - 1 do
      local r = string.sub(data, i * R + 1, i * R + R)
      if string.byte(r, 1) == ACCEPTED then
        local m = rec_unpack(r)
        if m.t1 <= limit then
          m.state = UNCONFIRMED
          rec_write(cid, b, i * R, m)
          move(cid, ACCEPTED, UNCONFIRMED)
          local index = b * bsize + i
          local e = message_event(ARGV[3], 'unconfirmed', cid, index, num(m.dest), h[2],
            reference_of(h[4], cid, b, index))
          e['accepted_at'] = m.t1
          e['trunk'] = h[3]
          e['didww_id'] = uuid_text(m.id, m.flags) or (
            math.floor(m.flags / RAW_ID) % 2 == 1
            and redis.call('HGET', rawids_key(cid), index) or cjson.null)
          publish(KEYS[2], ARGV[2], cjson.encode(e))
          changed = changed + 1
        elseif oldest == nil or m.t1 < oldest then
          oldest = m.t1
        end
      end
    end
    maybe_done(cid, now)
  end
  if oldest then
    redis.call('ZADD', KEYS[1], oldest, member)
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return changed
