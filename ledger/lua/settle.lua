-- Match kept callbacks to unknown messages by source, destination and time: the message's
-- 201 was lost, so its DIDWW id never reached the index. Run by the workers' supervisors for
-- callbacks kept longer than `after`. A kept callback is matched only while no message to the
-- same source and destination is `sending`: such a message may still record the callback's
-- id from its 201 (record.lua then joins them), so taking the callback for an unknown one
-- would leave the sending one accepted with its callback spent.
-- Each call first bounds what is kept (kept_trim), then walks the kept stream on from where the
-- last call stopped (KEPT_INFO's cursor), at most ARGV[6] entries, and starts again from the
-- oldest once it reaches those kept less than `after` ago: a callback not matched is looked
-- at again on the next round. Entries of callbacks joined meanwhile are removed as passed.
-- ARGV[1] settle after (s)   ARGV[2] match window (s)   ARGV[3] stream   ARGV[4] stream maxlen
-- ARGV[5] orphan TTL (s)   ARGV[6] most callbacks to look at   ARGV[7] most kept
-- (SMSQ_ORPHANS_MAX)
-- Returns the number of messages settled.
local t = redis.call('TIME')
local now = tonumber(t[1])
local after, match_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local settled = 0
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
kept_trim(now_ms, tonumber(ARGV[5]), tonumber(ARGV[7]), 1000)
-- Kept by versions that stored each callback under its own key: they expire by themselves;
-- their index had no expiry.
redis.call('DEL', P .. 'orphans')
local cursor = redis.call('HGET', KEPT_INFO, 'cursor') or '-'
local due = redis.call('XRANGE', KEPT, cursor == '-' and '-' or '(' .. cursor,
  num(math.floor(now_ms - after * 1000)), 'COUNT', ARGV[6])
local next_cursor = #due < tonumber(ARGV[6]) and '-' or due[#due][1]
-- Written only when it moves: a pass with nothing kept writes nothing.
if next_cursor ~= cursor then redis.call('HSET', KEPT_INFO, 'cursor', next_cursor) end
for _, entry in ipairs(due) do
  local idkey = entry[2][2]
  local kept = kept_get(idkey)
  if not kept then
    redis.call('XDEL', KEPT, entry[1])  -- joined meanwhile
  else
    local src, dst = kept.source, kept.destination
    local found = nil
    if redis.call('EXISTS', sending_by_pair(src, dst)) == 0 then
      local ukey = unknown_by_pair(src, dst)
      -- A callback kept under a trunk's token matches only that trunk's messages.
      local trunk = kept.trunk
      found = nearest(ukey, kept.t, match_window, function(member)
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
        local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'references', 'trunk')
        local bsize = tonumber(h[1])
        local m, off = rec_read(cid, b, index, bsize)
        local state = CODES[kept.state]
        m.state = state
        m.code = kept.code_id and math.min(kept.code_id + 1, 65535) or 0
        m.frags = kept.fragments or m.frags
        m.t1 = kept.t1
        m.t2 = kept.dt
        m.flags = with_status(with_flag(with_flag(m.flags, MATCHED), LATE), kept.status)
        m.id = idkey
        if kept.raw_id then
          m.flags = with_flag(m.flags, RAW_ID)
          redis.call('HSET', rawids_key(cid), index, kept.raw_id)
        end
        rec_write(cid, b, off, m)
        move(cid, UNKNOWN, state)
        index_add(idkey, cid, index)
        local event = kept_event(kept, idkey, cid, index, now_ms)
        event['type'] = kept.state
        event['matched_by'] = 'source, destination and time'
        event['late'] = true
        event['previous_state'] = 'unknown'
        event['reference'] = reference_of(h[2], cid, b, index)
        publish(ARGV[3], ARGV[4], cjson.encode(event))
        stat('callbacks_matched', h[3] or 'default')
        rates_add(rates_key(h[3] or 'default'), now, 0, 1)
        redis.call('ZREM', ukey, found)
        kept_forget(idkey, kept.trunk)
        redis.call('XDEL', KEPT, entry[1])
        maybe_done(cid, now)
        settled = settled + 1
      end
    end
    -- Not found: its message may become unknown later (a lost worker is found after a
    -- while), or the message now sending may record it; looked at again next round.
  end
end
return settled
