-- Mark one message unknown (sending -> unknown): its request may have reached DIDWW.
-- KEYS[1] batch hash (the helpers rebuild it from ARGV)
-- ARGV[1] campaign id   ARGV[2] batch   ARGV[3] message field   ARGV[4] source
-- ARGV[5] event base JSON   ARGV[6] stream   ARGV[7] stream maxlen   ARGV[8] orphan TTL (s)
-- ARGV[9] when the last attempt was posted (s)
-- Returns {'unknown'}, {'skip', state} or {'missing'}
local record = redis.call('HGET', KEYS[1], ARGV[3])
if not record then return {'missing'} end
local state, dest = split(record)
if state ~= 'sending' then return {'skip', state} end
local m = {cid = ARGV[1], batch = ARGV[2], index = ARGV[3], dest = dest}
to_unknown(m, ARGV[4], ARGV[9], cjson.decode(ARGV[5]),
           {stream = ARGV[6], maxlen = ARGV[7], orphan_ttl = ARGV[8]})
return {'unknown'}
