-- A worker process stopped while it was sending (killed, or its Redis connection broke):
-- every message of this batch it had claimed becomes unknown, since its request may have
-- reached DIDWW. Run on the batch of a lost owner, and by an owner on its own leftovers.
-- KEYS[1] batch hash   KEYS[2] campaign hash
-- ARGV[1] owner   ARGV[2] campaign id   ARGV[3] batch   ARGV[4] event base JSON (campaign
-- fields; message_id and destination are set here)   ARGV[5] stream   ARGV[6] stream maxlen
-- ARGV[7] orphan TTL (s)
-- Returns the number of messages marked unknown.
local source = redis.call('HGET', KEYS[2], 'source')
if not source then return 0 end
local o = {stream = ARGV[5], maxlen = ARGV[6], orphan_ttl = ARGV[7]}
local suffix = '@' .. ARGV[1]
local swept = 0
local records = redis.call('HGETALL', KEYS[1])
for i = 1, #records, 2 do
  local state, dest, extra = split(records[i + 1])
  if state == 'sending' and string.sub(extra, -#suffix) == suffix then
    local event = cjson.decode(ARGV[4])
    event['message_id'] = ARGV[2] .. '-' .. records[i]
    event['destination'] = dest
    local m = {cid = ARGV[2], batch = ARGV[3], index = records[i], dest = dest}
    to_unknown(m, source, string.match(extra, '^([^@]*)'), event, o)
    swept = swept + 1
  end
end
return swept
