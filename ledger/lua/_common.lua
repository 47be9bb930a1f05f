-- Helpers prepended to every ledger script by ledger/scripts.py.
-- Keys of messages found through an index are built here the way ledger/keys.py builds them
-- (tests/unit/test_ledger.py checks they agree). smsq runs on one Redis, not a Cluster.
local P = 'smsq:'
local ORPHANS, STATS, ACCEPTING = P .. 'orphans', P .. 'stats', P .. 'accepting'
local RETENTION, PARKED, INFLIGHT = P .. 'retention', P .. 'parked', P .. 'inflight'
local function campaign_key(cid) return P .. 'campaign:' .. cid end
local function counts_key(cid) return P .. 'campaign:' .. cid .. ':counts' end
local function batch_key(cid, b) return P .. 'campaign:' .. cid .. ':batch:' .. b end
local function fields_key(cid, b) return P .. 'campaign:' .. cid .. ':fields:' .. b end
local function rawids_key(cid) return P .. 'campaign:' .. cid .. ':rawids' end
local function posted_key(cid) return P .. 'campaign:' .. cid .. ':posted' end
local POSTED_RING = 16  -- keys.POSTED_RING_S
local function orphan_key(id) return P .. 'orphan:' .. id end
local function orphans_by_pair(src, dst) return P .. 'orphans:' .. src .. ':' .. dst end
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
-- A message's event: the fields Python built (base_json), with its type and the message's
-- fields that only the script knows.
local function message_event(base_json, event_type, cid, index, dest, source)
  local e = cjson.decode(base_json)
  e['type'] = event_type
  e['campaign_id'] = cid
  e['message_id'] = cid .. '-' .. index
  e['destination'] = dest
  e['source'] = source
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
