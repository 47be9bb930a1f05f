-- Helpers prepended to every ledger script by ledger/scripts.py.
-- Keys of messages found through an index are built here the way ledger/keys.py builds them
-- (tests/unit/test_ledger.py checks they agree). smsq runs on one Redis, not a Cluster.
local P = 'smsq:'
local STATS, ACCEPTING = P .. 'stats', P .. 'accepting'
local KEPT, KEPT_INFO = P .. 'kept', P .. 'kept:info'
local RETENTION, PARKED, INFLIGHT = P .. 'retention', P .. 'parked', P .. 'inflight'
local function campaign_key(cid) return P .. 'campaign:' .. cid end
local function counts_key(cid) return P .. 'campaign:' .. cid .. ':counts' end
local function batch_key(cid, b) return P .. 'campaign:' .. cid .. ':batch:' .. b end
local function fields_key(cid, b) return P .. 'campaign:' .. cid .. ':fields:' .. b end
local function refs_key(cid, b) return P .. 'campaign:' .. cid .. ':refs:' .. b end
local function rawids_key(cid) return P .. 'campaign:' .. cid .. ':rawids' end
local function posted_key(cid) return P .. 'campaign:' .. cid .. ':posted' end
local POSTED_RING = 16  -- keys.POSTED_RING_S
-- A trunk's last hour, second by second (ledger/trunks.py reads it; the dashboard's chart):
-- a string of RATES_RING slots of RATES_SLOT bytes, slot `second % RATES_RING`: the second
-- (u32), messages claimed in it (u16), callbacks settled in it (u16); 28,800 bytes a trunk.
local RATES_RING, RATES_SLOT = 3600, 8  -- keys.RATES_RING_S, trunks.RATES_SLOT
local function rates_key(trunk) return P .. 'trunk:' .. trunk .. ':rates' end
local function unknown_by_pair(src, dst) return P .. 'unknown:' .. src .. ':' .. dst end
local function sending_by_pair(src, dst) return P .. 'sending:' .. src .. ':' .. dst end

-- Message states as stored (ledger/states.py: Code) and as named in counts and events.
local QUEUED, SENDING, ACCEPTED, SENT, FAILED = 0, 1, 2, 3, 4
local REJECTED, EXPIRED, UNKNOWN, CANCELLED, UNCONFIRMED, SUPPRESSED = 5, 6, 7, 8, 9, 10
local NAMES = {[0] = 'queued', 'sending', 'accepted', 'sent', 'failed', 'rejected',
  'expired', 'unknown', 'cancelled', 'unconfirmed', 'suppressed'}
local CODES = {}
for code = 0, #NAMES do CODES[NAMES[code]] = code end
-- Record flags (ledger/records.py).
local LATE, MATCHED, RAW_ID = 1, 2, 4
-- DIDWW's callback status in flag bits 3-4 (records.STATUSES).
local STATUS_UNIT = 8
local STATUS_CODES = {['Success'] = 1, ['Routing Error'] = 2, ['Failed'] = 3}
local function with_status(flags, status)
  local code = STATUS_CODES[status] or 0
  return flags % STATUS_UNIT + code * STATUS_UNIT + math.floor(flags / (4 * STATUS_UNIT)) * 4 * STATUS_UNIT
end
local NO_ID = string.rep('\0', 16)
local function with_flag(flags, flag)
  if math.floor(flags / flag) % 2 == 1 then return flags end
  return flags + flag
end

-- Records: 35 bytes, big-endian (ledger/records.py has the layout).
local R = 35
local function be(s, from, n)
  local v = 0
  for i = from, from + n - 1 do v = v * 256 + string.byte(s, i) end
  return v
end
local function tobe(v, n)
  local out = {}
  for i = n, 1, -1 do
    local low = v % 256
    out[i] = string.char(low)
    v = (v - low) / 256
  end
  return table.concat(out)
end
local function num(v) return string.format('%.0f', v) end

local function rec_unpack(r)
  return {state = string.byte(r, 1), attempts = string.byte(r, 2), frags = string.byte(r, 3),
    flags = string.byte(r, 4), code = be(r, 5, 2), dest = be(r, 7, 7), t1 = be(r, 14, 4),
    t2 = be(r, 18, 2), id = string.sub(r, 20, 35)}
end
local function rec_pack(m)
  return string.char(m.state, math.min(m.attempts, 255), math.min(m.frags, 255), m.flags)
    .. tobe(m.code, 2) .. tobe(m.dest, 7) .. tobe(m.t1, 4) .. tobe(math.min(m.t2, 65535), 2)
    .. m.id
end
-- The record of message `index` in batch `b`, and its byte offset; nil if there is none.
local function rec_read(cid, b, index, batch_size)
  local off = (index - b * batch_size) * R
  if off < 0 then return nil end
  local r = redis.call('GETRANGE', batch_key(cid, b), off, off + R - 1)
  if #r < R then return nil end
  return rec_unpack(r), off
end
local function rec_write(cid, b, off, m)
  redis.call('SETRANGE', batch_key(cid, b), off, rec_pack(m))
end

-- Counts follow every move; a campaign whose last pending message settles is done, and is
-- purged SMSQ_RETENTION_S after that (ledger/retention.py).
local function move(cid, src, dst)
  local key = counts_key(cid)
  redis.call('HINCRBY', key, NAMES[src], -1)
  redis.call('HINCRBY', key, NAMES[dst], 1)
end
-- A message of a done campaign went back to pending (a swept claim's answer came after all):
-- the campaign is not done any more, and not to be purged.
local function undone(cid)
  if redis.call('HDEL', campaign_key(cid), 'done_at') == 1 then
    redis.call('ZREM', RETENTION, cid)
  end
end

-- Park a batch until `at` (Unix s): the earlier time wins, unless a supervisor holds the batch's
-- lease to publish it; then this newer reason to wait wins, and the lease goes so the
-- supervisor does not remove the batch once it has published it (lease.lua, unlease.lua).
local function park(member, at)
  local lease = PARKED .. ':lease:' .. member
  if redis.call('EXISTS', lease) == 1 then
    redis.call('DEL', lease)
    redis.call('ZADD', PARKED, at, member)
  else
    redis.call('ZADD', PARKED, 'LT', at, member)
  end
end

-- A DIDWW id key (16 bytes) as the UUID text DIDWW sent, or nil for a hashed raw id.
local function uuid_text(id, flags)
  if id == NO_ID or math.floor(flags / RAW_ID) % 2 == 1 then return nil end
  local h = string.gsub(id, '.', function(c) return string.format('%02x', string.byte(c)) end)
  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-' .. string.sub(h, 13, 16)
    .. '-' .. string.sub(h, 17, 20) .. '-' .. string.sub(h, 21, 32)
end

-- Global counters (smsq:stats), in all (`name`) and per trunk (`name:trunk`; no per-trunk
-- count for trunk '', a callback token that named no trunk).
local function stat(name, trunk, n)
  redis.call('HINCRBY', STATS, name, n or 1)
  if trunk ~= '' then redis.call('HINCRBY', STATS, name .. ':' .. trunk, n or 1) end
end

-- Count `claimed` messages and `callbacks` settled in second `now_s` in a trunk's ring (`key`,
-- its rates_key); a slot last written in another second starts again.
local function rates_add(key, now_s, claimed, callbacks)
  local off = (now_s % RATES_RING) * RATES_SLOT
  local slot = redis.call('GETRANGE', key, off, off + RATES_SLOT - 1)
  if #slot == RATES_SLOT and be(slot, 1, 4) == now_s then
    claimed, callbacks = claimed + be(slot, 5, 2), callbacks + be(slot, 7, 2)
  end
  redis.call('SETRANGE', key, off, tobe(now_s, 4) .. tobe(math.min(claimed, 65535), 2)
    .. tobe(math.min(callbacks, 65535), 2))
end

local function maybe_done(cid, now_s)
  local c = redis.call('HMGET', counts_key(cid), 'queued', 'sending', 'accepted')
  if (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) > 0 then return end
  if redis.call('EXISTS', campaign_key(cid)) == 0 then return end
  if redis.call('HSETNX', campaign_key(cid), 'done_at', num(now_s)) == 1 then
    redis.call('ZADD', RETENTION, now_s, cid)
  end
end

local function publish(stream, maxlen, json)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', json)
end
-- References (docs/architecture.md, "References"): a campaign whose recipients carried one
-- has `references` '1' in its hash and each message's in refs_key(cid, b) under its index;
-- every event of such a message carries it. `has`: the hash's `references` field, read with
-- the campaign's other fields, so a campaign without references costs no extra call.
local function reference_of(has, cid, b, index)
  if has ~= '1' then return nil end
  return redis.call('HGET', refs_key(cid, b), index) or nil
end
-- An event Python built whole (JSON), with the message's reference if it has one.
local function with_reference(json, ref)
  if not ref then return json end
  local e = cjson.decode(json)
  e['reference'] = ref
  return cjson.encode(e)
end
-- A message's event: the fields Python built (base_json), with its type and the message's
-- fields that only the script knows (`ref`: its reference, or nil).
local function message_event(base_json, event_type, cid, index, dest, source, ref)
  local e = cjson.decode(base_json)
  e['type'] = event_type
  e['campaign_id'] = cid
  e['message_id'] = cid .. '-' .. index
  e['destination'] = dest
  e['source'] = source
  e['reference'] = ref
  return e
end
-- Publish an event whose fields Python built, with its type and some fields set here.
local function publish_as(stream, maxlen, base_json, event_type, extra)
  local event = cjson.decode(base_json)
  event['type'] = event_type
  if extra then for k, v in pairs(extra) do event[k] = v end end
  publish(stream, maxlen, cjson.encode(event))
end

-- Messages to a (source, destination) pair now `sending`: while there are some, a kept
-- callback for that pair may belong to one of them and is not matched by number (settle.lua).
local function pair_sending(src, dst, delta)
  local key = sending_by_pair(src, dst)
  local n = redis.call('INCRBY', key, delta)
  if n <= 0 then redis.call('DEL', key) else redis.call('EXPIRE', key, 86400) end
end

-- The DIDWW-id index: 4,096 string buckets of 28-byte entries id key (16) | cid (8) |
-- index (4), chosen by the id key's first 12 bits.
local ENTRY = 28
local function id_bucket(idkey)
  return P .. 'ids:' .. string.sub(string.format('%02x%02x', string.byte(idkey, 1, 2)), 1, 3)
end
local function cid_bytes(cid)
  return (string.gsub(cid, '..', function(h) return string.char(tonumber(h, 16)) end))
end
local function cid_hex(b)
  return (string.gsub(b, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
local function index_add(idkey, cid, index)
  local key = id_bucket(idkey)
  local current = redis.call('GET', key) or ''
  -- SET of the whole string, not APPEND: APPEND reserves up to twice the length.
  redis.call('SET', key, current .. idkey .. cid_bytes(cid) .. tobe(index, 4))
end
-- (cid, index) of the message a DIDWW id key belongs to, or nil.
local function index_find(idkey)
  local s = redis.call('GET', id_bucket(idkey))
  if not s then return nil end
  local pos = 1
  while true do
    local i = string.find(s, idkey, pos, true)
    if not i then return nil end
    if (i - 1) % ENTRY == 0 then
      return cid_hex(string.sub(s, i + 16, i + 23)), be(s, i + 24, 4)
    end
    pos = i + 1
  end
end

-- The member of a sorted set whose score is nearest t within window, among those that
-- accept(member) approves; members accept() refuses are stale and removed.
local function nearest(zkey, t, window, accept)
  local found = redis.call('ZRANGEBYSCORE', zkey, t - window, t + window, 'WITHSCORES')
  local best, best_gap = nil, nil
  for i = 1, #found, 2 do
    local member, gap = found[i], math.abs(tonumber(found[i + 1]) - t)
    if accept(member) then
      if best == nil or gap < best_gap then best, best_gap = member, gap end
    else
      redis.call('ZREM', zkey, member)
    end
  end
  return best
end

-- sending -> unknown: the request may have reached DIDWW but its answer did not reach us.
-- Indexed by source and destination, so that a callback nobody claims can be matched to it
-- later (settle.lua). m: the record; at: {cid, b, index, off, source}; o: {stream, maxlen,
-- orphan_ttl, now}.
local function to_unknown(m, at, event_json, o)
  local dest = num(m.dest)
  m.state = UNKNOWN
  m.id = NO_ID
  rec_write(at.cid, at.b, at.off, m)
  move(at.cid, SENDING, UNKNOWN)
  pair_sending(at.source, dest, -1)
  publish(o.stream, o.maxlen, event_json)
  local ukey = unknown_by_pair(at.source, dest)
  redis.call('ZADD', ukey, m.t1, at.cid .. '|' .. at.b .. '|' .. at.index)
  redis.call('EXPIRE', ukey, o.orphan_ttl)
  maybe_done(at.cid, o.now)
end

-- Kept callbacks ("orphans": docs/architecture.md, "Callbacks"): callbacks for DIDWW ids not
-- (yet) indexed, kept to be joined when a worker records the id (record.lua) or matched by
-- number and time to an unknown message (settle.lua). About 160 bytes each in all (measured
-- by tests/integration/test_callback_abuse.py's flood of forged ids):
--   KEPT            stream, one entry per kept callback in the order kept: {'k', id key}
--   kept_bucket(k)  hash, chosen like the id index's buckets: id key -> kept_pack(...)
--   KEPT_INFO       hash: 'count' kept now, 'count:{trunk}' of them per trunk, 'cursor'
--                   where settle.lua goes on
-- A joined or matched callback leaves the hash at once and the stream when settle.lua or
-- kept_trim passes its entry. Never more than SMSQ_ORPHANS_MAX (the oldest dropped, counted
-- as orphans_dropped) nor older than SMSQ_ORPHAN_TTL_S (orphans_expired): kept_trim runs at
-- every ingest and every settle pass.
local SUCCESS_REASON = 'Message was sent successfully'  -- ledger/reasons.py
local STATUS_NAMES = {}
for name, code in pairs(STATUS_CODES) do STATUS_NAMES[code] = name end
-- Flags (callback_store.py): DIDWW gave time_start, time_end in its own shape (written again
-- from the numbers), and the digits of each one's fraction (4 x start's, 16 x end's).
local KEPT_START, KEPT_END, KEPT_START_DIGITS, KEPT_END_DIGITS = 1, 2, 4, 16
local function kept_bucket(idkey)
  return P .. 'kept:' .. string.sub(string.format('%02x%02x', string.byte(idkey, 1, 2)), 1, 3)
end
-- A kept callback's values, none derived from another, in about 60 bytes (a small hash
-- field stays in Redis's compact encoding up to 64): numbers first, comma-separated,
-- `status * 64 + flags` (DIDWW's status as its code), code_id and fragments_sent ('' for
-- none), time_start (Unix s with ms), ms to time_end; then ';' and length-prefixed texts
-- (`7:default`): the token's trunk, source, destination, the id when it is not a UUID, the
-- reason when DIDWW gave a code_id ('' for none; no code_id means the success reason), and
-- time_start and time_end when DIDWW spelled them otherwise than its own shape. Trailing
-- empty texts are left out.
local function kept_pack(o)
  local texts = {o.trunk, o.source, o.destination, o.raw_id or '',
    o.code_id and o.reason or '', o.start_text or '', o.end_text or ''}
  while #texts > 0 and texts[#texts] == '' do texts[#texts] = nil end
  for i, text in ipairs(texts) do texts[i] = #text .. ':' .. text end
  return table.concat({(STATUS_CODES[o.status] or 0) * 64 + o.flags, o.code_id or '',
    o.fragments or '', o.t, o.dt_ms}, ',') .. ';' .. table.concat(texts)
end
local function kept_unpack(raw)
  local head, pos = string.match(raw, '^([^;]*);()')
  local n = {}
  for v in string.gmatch(head .. ',', '([^,]*),') do n[#n + 1] = v end
  local texts = {}
  while pos <= #raw do
    local len, at = string.match(raw, '^(%d+):()', pos)
    len = tonumber(len)
    texts[#texts + 1] = string.sub(raw, at, at + len - 1)
    pos = at + len
  end
  for i = 1, 7 do texts[i] = texts[i] or '' end
  local status = STATUS_NAMES[math.floor(tonumber(n[1]) / 64)]
  local code_id = tonumber(n[2])
  local o = {status = status, state = status == 'Success' and 'sent' or 'failed',
    flags = tonumber(n[1]) % 64, code_id = code_id, fragments = tonumber(n[3]),
    t = tonumber(n[4]), dt_ms = tonumber(n[5]), trunk = texts[1], source = texts[2],
    destination = texts[3], raw_id = texts[4] ~= '' and texts[4] or nil,
    start_text = texts[6] ~= '' and texts[6] or nil,
    end_text = texts[7] ~= '' and texts[7] or nil}
  if not code_id then
    o.reason = SUCCESS_REASON
  elseif texts[5] ~= '' then
    o.reason = texts[5]
  end
  -- As a record stores them (callback_store.py): a start it cannot hold is 0, and so is the
  -- duration then.
  o.t1 = (o.t >= 0 and o.t < 4294967296) and math.floor(o.t) or 0
  o.dt = o.t1 > 0 and math.max(0, math.floor(o.dt_ms / 1000 + 0.5)) or 0
  return o
end
-- Unix ms as ISO 8601 UTC with `digits` (0-3) of the second's fraction (days to a civil
-- date: H. Hinnant's algorithm).
local function iso_ms(ms, digits)
  ms = math.floor(ms + 0.5)
  local s = math.floor(ms / 1000)
  local days = math.floor(s / 86400)
  local sod = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  local fraction = ''
  if (digits or 3) > 0 then
    fraction = '.' .. string.sub(string.format('%03d', ms - s * 1000), 1, digits or 3)
  end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d', y, m, d, math.floor(sod / 3600),
    math.floor(sod % 3600 / 60), sod % 60) .. fraction .. 'Z'
end
-- The event a kept callback gives the message it settles (callbacks/document.py's fields).
local function kept_event(o, idkey, cid, index, now_ms)
  local t_ms = math.floor(o.t * 1000 + 0.5)
  local function time(flag, digits_unit, at, text)
    if text then return text end
    if math.floor(o.flags / flag) % 2 == 0 then return cjson.null end
    return iso_ms(at, math.floor(o.flags / digits_unit) % 4)
  end
  return {campaign_id = cid, message_id = cid .. '-' .. index,
    didww_id = o.raw_id or uuid_text(idkey, 0), destination = o.destination,
    source = o.source, at = iso_ms(now_ms, 3), status = o.status,
    code_id = o.code_id or cjson.null, reason = o.reason or cjson.null,
    fragments_sent = o.fragments or cjson.null,
    time_start = time(KEPT_START, KEPT_START_DIGITS, t_ms, o.start_text),
    time_end = time(KEPT_END, KEPT_END_DIGITS, t_ms + o.dt_ms, o.end_text)}
end
local function kept_get(idkey)
  local raw = redis.call('HGET', kept_bucket(idkey), idkey)
  return raw and kept_unpack(raw)
end
-- Kept callbacks are counted in all ('count') and per trunk ('count:' .. the trunk whose
-- token brought them; not for a token that named none).
local function kept_counted(trunk, delta)
  redis.call('HINCRBY', KEPT_INFO, 'count', delta)
  if trunk == '' then return end
  -- Callbacks kept before per-trunk counts existed were never counted in one: a trunk's
  -- count stops at 0 while they go (within SMSQ_ORPHAN_TTL_S of the upgrade).
  if redis.call('HINCRBY', KEPT_INFO, 'count:' .. trunk, delta) < 0 then
    redis.call('HSET', KEPT_INFO, 'count:' .. trunk, 0)
  end
end
-- Forget a kept callback (joined, matched, dropped or expired): its trunk, or false if it was
-- not kept. `trunk`: its trunk, when the caller has unpacked it (else read here).
local function kept_forget(idkey, trunk)
  local bucket = kept_bucket(idkey)
  if trunk == nil then
    local raw = redis.call('HGET', bucket, idkey)
    if not raw then return false end
    trunk = kept_unpack(raw).trunk
  end
  if redis.call('HDEL', bucket, idkey) == 0 then return false end
  kept_counted(trunk, -1)
  return trunk
end
local function kept_count() return tonumber(redis.call('HGET', KEPT_INFO, 'count')) or 0 end
-- Bound what is kept: the oldest go while more than `max` are kept or while they are older
-- than `ttl_s`, at most `budget` stream entries looked at per call.
local function kept_trim(now_ms, ttl_s, max, budget)
  local count = kept_count()
  local oldest = now_ms - ttl_s * 1000
  while budget > 0 do
    local entries = redis.call('XRANGE', KEPT, '-', '+', 'COUNT', math.min(budget, 50))
    if #entries == 0 then return end
    for _, e in ipairs(entries) do
      local ms = tonumber(string.match(e[1], '^(%d+)'))
      local over = count > max
      if not over and ms >= oldest then return end
      local trunk = kept_forget(e[2][2])
      if trunk then
        count = count - 1
        stat(over and 'orphans_dropped' or 'orphans_expired', trunk)
      end
      redis.call('XDEL', KEPT, e[1])
      budget = budget - 1
    end
  end
end
