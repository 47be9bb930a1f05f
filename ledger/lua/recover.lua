-- A worker process that held a batch stopped beating (killed, or its host lost): in one step,
-- re-check that it is still silent, mark the messages it had claimed unknown (their requests
-- may have reached DIDWW, so they are never resent), park the batch so its queued messages go
-- on, and forget the entry. A worker that beats again in time keeps everything.
-- KEYS[1] in-flight hash   KEYS[2] parked batches
-- ARGV[1] field cid|batch|owner   ARGV[2] silence (s)   ARGV[3] stream   ARGV[4] stream maxlen
-- ARGV[5] orphan TTL (s)   ARGV[6] event base JSON
-- Returns the number of messages marked unknown, or -1 if the owner is not lost.
local t = redis.call('TIME')
local now = tonumber(t[1])
local beat = redis.call('HGET', KEYS[1], ARGV[1])
if not beat or tonumber(beat) > now - tonumber(ARGV[2]) then return -1 end
local cid, b, owner = string.match(ARGV[1], '^(.*)|(%d+)|(%d+)$')
b, owner = tonumber(b), tonumber(owner)
local swept = 0
local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'source', 'trunk', 'references')
local data = redis.call('GET', batch_key(cid, b))
if h[1] and data then
  local bsize, source = tonumber(h[1]), h[2]
  local o = {stream = ARGV[3], maxlen = ARGV[4], orphan_ttl = tonumber(ARGV[5]), now = now}
  for i = 0, #data / R - 1 do
    local r = string.sub(data, i * R + 1, i * R + R)
    if string.byte(r, 1) == SENDING and be(r, 20, 4) == owner then
      local m = rec_unpack(r)
      local index = b * bsize + i
      local e = message_event(ARGV[6], 'unknown', cid, index, num(m.dest), source,
        reference_of(h[4], cid, b, index))
      e['trunk'] = h[3]
      local at = {cid = cid, b = b, index = index, off = i * R, source = source}
      to_unknown(m, at, cjson.encode(e), o)
      swept = swept + 1
    end
  end
  park(cid .. '|' .. b, now)
end
redis.call('HDEL', KEYS[1], ARGV[1])
return swept
