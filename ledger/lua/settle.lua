-- Match kept callbacks to unknown messages by source, destination and time: the message's
-- 201 was lost, so its DIDWW id never reached the index. Run by the workers' supervisors for
-- callbacks kept longer than `after`. A kept callback is matched only while no message to the
-- same source and destination is `sending`: such a message may still record the callback's
-- id from its 201 (record.lua then joins them), so taking the callback for an unknown one
-- would leave the sending one accepted with its callback spent.
-- ARGV[1] settle after (s)   ARGV[2] match window (s)   ARGV[3] stream   ARGV[4] stream maxlen
-- ARGV[5] look again after (s)   ARGV[6] most callbacks to look at
-- Returns the number of messages settled.
local t = redis.call('TIME')
local now = tonumber(t[1])
local after, match_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local settled = 0
local due = redis.call('ZRANGEBYSCORE', ORPHANS, '-inf', now - after, 'LIMIT', 0, ARGV[6])
for _, id in ipairs(due) do
  local raw = redis.call('GET', orphan_key(id))
  if not raw then
    redis.call('ZREM', ORPHANS, id)  -- joined elsewhere, or expired
  else
    local kept = cjson.decode(raw)
    local src, dst = kept['event']['source'], kept['event']['destination']
    local found = nil
    if redis.call('EXISTS', sending_by_pair(src, dst)) == 0 then
      local ukey = unknown_by_pair(src, dst)
      -- A callback kept under a trunk's token matches only that trunk's messages.
      local trunk = kept['trunk'] or ''
      found = nearest(ukey, tonumber(kept['t']), match_window, function(member)
        local cid, b, index = string.match(member, '^(.*)|(%d+)|(%d+)$')
        local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'trunk')
        local bsize = tonumber(h[1] or '')
        if not bsize then return false end
        local m = rec_read(cid, tonumber(b), tonumber(index), bsize)
        return m ~= nil and m.state == UNKNOWN and num(m.dest) == dst
          and (trunk == '' or trunk == (h[2] or 'default'))
      end)
      if found then
        local cid, b, index = string.match(found, '^(.*)|(%d+)|(%d+)$')
        b, index = tonumber(b), tonumber(index)
        local bsize = tonumber(redis.call('HGET', campaign_key(cid), 'batch_size'))
        local m, off = rec_read(cid, b, index, bsize)
        local state = CODES[kept['state']]
        m.state = state
        m.code = (kept['code_id'] ~= nil and kept['code_id'] ~= cjson.null) and math.min(kept['code_id'] + 1, 65535) or 0
        m.frags = tonumber(kept['fragments']) or m.frags
        m.t1 = math.floor(tonumber(kept['t1'] or kept['t']))
        m.t2 = tonumber(kept['dt']) or 0
        m.flags = with_status(with_flag(with_flag(m.flags, MATCHED), LATE), kept['event']['status'])
        local idkey = kept['key_hex'] and string.gsub(kept['key_hex'], '..',
          function(h) return string.char(tonumber(h, 16)) end) or NO_ID
        m.id = idkey
        rec_write(cid, b, off, m)
        move(cid, UNKNOWN, state)
        if idkey ~= NO_ID then index_add(idkey, cid, index) end
        local event = kept['event']
        event['campaign_id'] = cid
        event['message_id'] = cid .. '-' .. index
        event['matched_by'] = 'source, destination and time'
        event['late'] = true
        event['previous_state'] = 'unknown'
        publish_as(ARGV[3], ARGV[4], cjson.encode(event), kept['state'])
        redis.call('HINCRBY', STATS, 'callbacks_matched', 1)
        redis.call('ZREM', ukey, found)
        redis.call('DEL', orphan_key(id))
        redis.call('ZREM', ORPHANS, id)
        redis.call('ZREM', orphans_by_pair(src, dst), id)
        maybe_done(cid, now)
        settled = settled + 1
      end
    end
    if not found then
      -- Its message may become unknown later (a lost worker is found after a while), or the
      -- message now sending may record it.
      redis.call('ZADD', ORPHANS, now - after + tonumber(ARGV[5]), id)
    end
  end
end
return settled
