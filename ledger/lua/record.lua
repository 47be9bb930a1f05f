-- Record what DIDWW answered for posted messages, many per call: one round trip after the
-- POSTs of a few milliseconds. Each result moves one message and publishes its event (built
-- by the caller, type included); a result for a message no longer in the expected state is
-- skipped (a lost worker's claim was swept to unknown meanwhile: see the moves below).
-- KEYS[1] events stream   KEYS[2] in-flight hash   KEYS[3] stats hash
-- ARGV[1] stream maxlen   ARGV[2] orphan TTL (s)   ARGV[3] number of results
-- ARGV[4] number of finished in-flight fields to forget (after the results), then those
-- fields (cid|batch|owner)
-- then per result 8 values: kind, cid, batch, index, a, b, c, event JSON
--   accepted: a = DIDWW id key (16 bytes), b = DIDWW id, c = '1' if the id is not a UUID
--             sending|unknown -> accepted; the id is indexed; a callback that came first
--             (kept as an orphan) settles it at once
--   rejected: sending|unknown -> rejected (DIDWW answered 400)
--   unknown:  sending -> unknown (a = when the request went out, s)
--   retry:    sending|unknown -> queued (the request surely never reached DIDWW); a = when
--             to run its batch again (Unix s), '' when the caller still holds the batch
--   unclaim:  sending -> queued, never written (the claim was answered too late); as retry,
--             and the attempt it counted is taken back
-- Returns per result: 1 if it moved, 0 if skipped; then per accepted-and-settled result the
-- final state name, else ''.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local stream, maxlen, orphan_ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local nforget = tonumber(ARGV[4])

local sizes, sources, trunks, refs = {}, {}, {}, {}
local function campaign(cid)
  if sizes[cid] == nil then
    local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'source', 'trunk',
      'references')
    sizes[cid] = tonumber(h[1]) or false
    sources[cid] = h[2]
    trunks[cid] = h[3] or 'default'
    refs[cid] = h[4]
  end
  return sizes[cid]
end

local moved, settled = {}, {}
local pos = 5 + nforget
for _ = 1, tonumber(ARGV[3]) do
  local kind, cid, b, index = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  local a, bb, c, ev = ARGV[pos + 4], ARGV[pos + 5], ARGV[pos + 6], ARGV[pos + 7]
  pos = pos + 8
  local ok, final = 0, ''
  local bsize = campaign(cid)
  local m, off
  if bsize then m, off = rec_read(cid, b, index, bsize) end
  if m then
    local source, dest = sources[cid], num(m.dest)
    local from = m.state
    local ref = nil
    if refs[cid] == '1' and kind ~= 'retry' and kind ~= 'unclaim' then
      ref = reference_of(refs[cid], cid, b, index)
      ev = with_reference(ev, ref)
    end
    if kind == 'accepted' and (from == SENDING or from == UNKNOWN) then
      m.state = ACCEPTED
      m.id = a
      m.t1 = now_s
      if c == '1' then
        m.flags = with_flag(m.flags, RAW_ID)
        redis.call('HSET', rawids_key(cid), index, bb)
      end
      rec_write(cid, b, off, m)
      move(cid, from, ACCEPTED)
      if from == SENDING then pair_sending(source, dest, -1) else undone(cid) end
      index_add(a, cid, index)
      publish(stream, maxlen, ev)
      ok = 1
      -- A callback that beat its 201 here: settle the message with it now, if it came with
      -- this campaign's trunk's token (one kept under another trunk's token is left alone).
      local o = kept_get(a)
      if o and o.trunk ~= '' and o.trunk ~= trunks[cid] then
        stat('callbacks_forbidden', o.trunk)
        o = nil
      end
      if o then
        local state = CODES[o.state]
        m.state = state
        m.code = o.code_id and math.min(o.code_id + 1, 65535) or 0
        m.frags = o.fragments or m.frags
        m.t1 = o.t1
        m.t2 = o.dt
        m.flags = with_status(m.flags, o.status)
        rec_write(cid, b, off, m)
        move(cid, ACCEPTED, state)
        local e = kept_event(o, a, cid, index, now_s * 1000 + math.floor(tonumber(t[2]) / 1000))
        e['type'] = o.state
        e['didww_id'] = bb
        e['reference'] = ref
        publish(stream, maxlen, cjson.encode(e))
        kept_forget(a, o.trunk)
        stat('orphans_joined', trunks[cid])
        rates_add(rates_key(trunks[cid]), now_s, 0, 1)
        final = o.state
        maybe_done(cid, now_s)
      else
        redis.call('ZADD', ACCEPTING, 'NX', now_s, cid .. '|' .. b)
      end
    elseif kind == 'rejected' and (from == SENDING or from == UNKNOWN) then
      m.state = REJECTED
      m.id = NO_ID
      rec_write(cid, b, off, m)
      move(cid, from, REJECTED)
      if from == SENDING then pair_sending(source, dest, -1) end
      publish(stream, maxlen, ev)
      maybe_done(cid, now_s)
      ok = 1
    elseif kind == 'unknown' and from == SENDING then
      m.t1 = tonumber(a)
      local at = {cid = cid, b = b, index = index, off = off, source = source}
      to_unknown(m, at, ev, {stream = stream, maxlen = maxlen, orphan_ttl = orphan_ttl,
        now = now_s})
      ok = 1
    elseif (kind == 'retry' and (from == SENDING or from == UNKNOWN))
        or (kind == 'unclaim' and from == SENDING) then
      m.state = QUEUED
      if kind == 'unclaim' then m.attempts = math.max(m.attempts - 1, 0) end
      m.id = NO_ID
      rec_write(cid, b, off, m)
      move(cid, from, QUEUED)
      if from == SENDING then pair_sending(source, dest, -1) else undone(cid) end
      ok = 1
    end
    if ok == 1 and (kind == 'retry' or kind == 'unclaim') and a ~= '' then
      park(cid .. '|' .. b, tonumber(a))
    end
  end
  moved[#moved + 1] = ok
  settled[#settled + 1] = final
end
-- Batches the caller is done with (every answer it had is recorded above): a message still
-- sending under its number was claimed in a call whose reply it never got, so it was never
-- posted. It goes back to queued and the batch is parked, so it is sent once, later.
for i = 1, nforget do
  local field = ARGV[4 + i]
  redis.call('HDEL', KEYS[2], field)
  local cid, b, owner = string.match(field, '^(.*)|(%d+)|(%d+)$')
  b, owner = tonumber(b), tonumber(owner)
  local bsize = campaign(cid)
  local data = bsize and redis.call('GET', batch_key(cid, b))
  local released = 0
  if data then
    for j = 0, #data / R - 1 do
      local r = string.sub(data, j * R + 1, j * R + R)
      if string.byte(r, 1) == SENDING and be(r, 20, 4) == owner then
        local m = rec_unpack(r)
        m.state = QUEUED
        m.id = NO_ID
        rec_write(cid, b, j * R, m)
        move(cid, SENDING, QUEUED)
        pair_sending(sources[cid], num(m.dest), -1)
        released = released + 1
      end
    end
  end
  if released > 0 then
    park(cid .. '|' .. b, now_s)
    stat('claims_released', trunks[cid], released)
  end
end
for _, v in ipairs(settled) do moved[#moved + 1] = v end
return moved
