-- Mark one message unknown (sending -> unknown) and settle it at once if a kept callback
-- matches it by source, destination and time.
-- KEYS[1] batch hash (the helpers rebuild it from ARGV)
-- ARGV[1] campaign id   ARGV[2] batch   ARGV[3] message field   ARGV[4] source
-- ARGV[5] event base JSON   ARGV[6] stream   ARGV[7] stream maxlen   ARGV[8] match window (s)
-- ARGV[9] orphan TTL (s)   ARGV[10] DIDWW id TTL (s)
-- Returns {'unknown'} or {'settled', state}, {'skip', state}, {'missing'}
local record = redis.call('HGET', KEYS[1], ARGV[3])
if not record then return {'missing'} end
local state, dest, extra = split(record)
if state ~= 'sending' then return {'skip', state} end
local posted_at = string.match(extra, '^([^@]*)')
local o = {stream = ARGV[6], maxlen = ARGV[7], window = tonumber(ARGV[8]),
           orphan_ttl = ARGV[9], didww_ttl = ARGV[10]}
local m = {cid = ARGV[1], batch = ARGV[2], index = ARGV[3], dest = dest}
local ended = to_unknown(m, ARGV[4], posted_at, cjson.decode(ARGV[5]), o)
if ended == 'unknown' then return {'unknown'} end
return {'settled', ended}
