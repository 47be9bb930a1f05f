-- Match kept callbacks to unknown messages by source, destination and time. Run by the
-- workers' supervisors for callbacks kept longer than the longest a 201 can take to be
-- recorded (the read timeout, plus a lost worker's detection): by then a callback still
-- unjoined cannot belong to a message whose 201 is on its way, so it is not taken from one.
-- ARGV[1] now (s)   ARGV[2] settle after (s)   ARGV[3] match window (s)   ARGV[4] stream
-- ARGV[5] stream maxlen   ARGV[6] DIDWW id TTL (s)   ARGV[7] look again after (s)
-- ARGV[8] most callbacks to look at
-- Returns the number of messages settled.
local now, after = tonumber(ARGV[1]), tonumber(ARGV[2])
local o = {stream = ARGV[4], maxlen = ARGV[5], didww_ttl = ARGV[6]}
local settled = 0
local due = redis.call('ZRANGEBYSCORE', ORPHANS, '-inf', now - after, 'LIMIT', 0, ARGV[8])
for _, id in ipairs(due) do
  local raw = redis.call('GET', orphan_key(id))
  if not raw then
    redis.call('ZREM', ORPHANS, id)  -- joined elsewhere, or expired
  else
    local kept = cjson.decode(raw)
    local src, dst = kept['event']['source'], kept['event']['destination']
    local ukey = unknown_by_pair(src, dst)
    local found = nearest(ukey, tonumber(kept['t']), tonumber(ARGV[3]), function(member)
      local cid, batch, index = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
      local record = redis.call('HGET', batch_key(cid, batch), index)
      return record ~= false and string.sub(record, 1, 8 + #dst) == 'unknown|' .. dst
    end)
    if found then
      local cid, batch, index = string.match(found, '^(.*)|([^|]*)|([^|]*)$')
      redis.call('ZREM', ukey, found)
      local m = {cid = cid, batch = batch, index = index, dest = dst}
      settle_unknown(m, {id = id, state = kept['state'], event = kept['event']}, o)
      redis.call('DEL', orphan_key(id))
      redis.call('ZREM', ORPHANS, id)
      redis.call('ZREM', orphans_by_pair(src, dst), id)
      settled = settled + 1
    else
      -- Its message may become unknown later (a lost worker is found after a while).
      redis.call('ZADD', ORPHANS, now - after + tonumber(ARGV[7]), id)
    end
  end
end
return settled
