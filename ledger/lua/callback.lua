-- Apply a DIDWW status callback, once, in one round trip: accepted -> sent|failed, or, for a
-- callback that comes late, unconfirmed|unknown -> sent|failed with the event marked late.
-- A callback whose DIDWW id is not indexed is kept (an orphan, _common.lua: kept_*): record.lua
-- joins it when the worker records the id, or settle.lua matches it to an unknown message by
-- source, destination and time once no message to that pair can still record it. What is
-- kept is bounded at once: kept_trim drops the oldest beyond SMSQ_ORPHANS_MAX and any older
-- than SMSQ_ORPHAN_TTL_S.
-- KEYS[1] events stream   KEYS[2] stats hash
-- ARGV[1] final state (sent|failed)   ARGV[2] event base JSON   ARGV[3] stream maxlen
-- ARGV[4] orphan TTL (s)   ARGV[5] most callbacks kept (SMSQ_ORPHANS_MAX)
-- ARGV[6] source   ARGV[7] destination   ARGV[8] DIDWW's time_start as a record stores it
-- (s; 0 when none fits)   ARGV[9] DIDWW id   ARGV[10] id key (16 bytes)
-- ARGV[11] code_id + 1 (0 for none)   ARGV[12] fragments sent ('' when DIDWW did not say: the
-- record keeps its estimate)   ARGV[13] seconds from time_start to time_end
-- ARGV[14] DIDWW's status (Success, ...)   ARGV[15] the trunk whose callback token came with it
-- ('' to settle any trunk's message)   ARGV[16] the id when it is not a UUID, else ''
-- ARGV[17] time_start for matching (Unix s; now when DIDWW gave none)
-- ARGV[18] kept flags (_common.lua: KEPT_START, ...)   ARGV[19] ms from time_start to
-- time_end (0 when DIDWW did not give both)   ARGV[20], ARGV[21] time_start, time_end as
-- DIDWW spelled them when not in its own shape, else ''
-- Returns {'applied', message id}, {'late', message id}, {'orphan'}, {'duplicate', state?},
-- {'forbidden'} (the message is another trunk's: a token settles only its own trunk's) or
-- {'missing'}
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local cid, index = index_find(ARGV[10])
if not cid then
  local idkey = ARGV[10]
  if redis.call('HEXISTS', kept_bucket(idkey), idkey) == 1 then
    stat('callbacks_duplicate', ARGV[15])
    return {'duplicate'}
  end
  local reason = cjson.decode(ARGV[2])['reason']
  local code = tonumber(ARGV[11])
  redis.call('HSET', kept_bucket(idkey), idkey, kept_pack({status = ARGV[14],
    code_id = code > 0 and code - 1 or nil, reason = reason ~= cjson.null and reason or nil,
    fragments = tonumber(ARGV[12]), t = ARGV[17], dt_ms = tonumber(ARGV[19]),
    flags = tonumber(ARGV[18]), trunk = ARGV[15], source = ARGV[6], destination = ARGV[7],
    raw_id = ARGV[16], start_text = ARGV[20], end_text = ARGV[21]}))
  redis.call('XADD', KEPT, '*', 'k', idkey)
  kept_counted(ARGV[15], 1)
  stat('orphans_kept', ARGV[15])
  kept_trim(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(ARGV[4]),
    tonumber(ARGV[5]), 100)
  return {'orphan'}
end

local h = redis.call('HMGET', campaign_key(cid), 'batch_size', 'trunk', 'references')
local bsize = tonumber(h[1] or '')
if not bsize then return {'missing'} end
local trunk = h[2] or 'default'
if ARGV[15] ~= '' and trunk ~= ARGV[15] then
  stat('callbacks_forbidden', ARGV[15])
  return {'forbidden'}
end
local b = math.floor(index / bsize)
local m, off = rec_read(cid, b, index, bsize)
if not m then return {'missing'} end
local from = m.state
if from ~= ACCEPTED and from ~= UNCONFIRMED and from ~= UNKNOWN then
  stat('callbacks_duplicate', trunk)
  return {'duplicate', NAMES[from]}
end
local state = CODES[ARGV[1]]
local late = from ~= ACCEPTED
m.state = state
m.code = tonumber(ARGV[11])
if ARGV[12] ~= '' then m.frags = tonumber(ARGV[12]) end
m.t1 = math.floor(tonumber(ARGV[8]))
m.t2 = math.max(0, tonumber(ARGV[13]))
if late then m.flags = with_flag(m.flags, LATE) end
m.flags = with_status(m.flags, ARGV[14])
rec_write(cid, b, off, m)
move(cid, from, state)
local extra = {campaign_id = cid, message_id = cid .. '-' .. index,
  reference = reference_of(h[3], cid, b, index)}
if late then
  extra['late'] = true
  extra['previous_state'] = NAMES[from]
end
publish_as(KEYS[1], ARGV[3], ARGV[2], ARGV[1], extra)
stat(late and 'callbacks_late' or 'callbacks_applied', trunk)
rates_add(rates_key(trunk), now_s, 0, 1)
maybe_done(cid, now_s)
return {late and 'late' or 'applied', cid .. '-' .. index}
