-- Fan events out to the webhook subscriptions they match and acknowledge them on the events
-- stream in the same step: an event is either acknowledged with every delivery it owes
-- scheduled, or read again. A delivery's id is 'msg_' and the event's entry id, the same on
-- every retry (the webhook-id header). A subscription that already owes the most deliveries
-- allowed gets the event as a failure at once (error 'backlog_full'), so a dead endpoint
-- cannot fill Redis.
-- KEYS[1] events stream   KEYS[2] subscriptions hash
-- then per subscription s = 1..S: KEYS[3s] its due set   KEYS[3s + 1] its deliveries hash
-- KEYS[3s + 2] its owed set;   last, KEYS[3S + 3] the failures stream
-- ARGV[1] consumer group   ARGV[2] S   ARGV[3] the most one subscription may owe
-- ARGV[4] failures kept (approximate)   ARGV[5 .. 4 + S] the subscription ids
-- then per entry: its entry id, its JSON, k, and k subscription numbers (1..S) it goes to
-- Returns how many deliveries were scheduled.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local S, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local failures = KEYS[3 * S + 3]
-- A subscription deleted since the caller read it gets nothing (its keys would never go).
local alive = {}
for s = 1, S do alive[s] = redis.call('HEXISTS', KEYS[2], ARGV[4 + s]) == 1 end
local function overflow(s, did, data)
  local url = cjson.decode(redis.call('HGET', KEYS[2], ARGV[4 + s]))['url']
  local failure = cjson.encode({webhook = ARGV[4 + s], id = did, url = url, attempts = 0,
    error = 'backlog_full', first_attempt_ms = now_ms})
  redis.call('XADD', failures, 'MAXLEN', '~', ARGV[4], '*', 'failure', failure, 'event', data)
end
local acked, scheduled = {}, 0
local i = S + 5
while i <= #ARGV do
  local eid, data, k = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local did = 'msg_' .. eid
  local written_ms = tonumber(string.match(eid, '^(%d+)'))
  for j = 0, k - 1 do
    local s = tonumber(ARGV[i + j])
    if alive[s] and redis.call('ZCARD', KEYS[3 * s + 2]) >= most then
      overflow(s, did, data)
    -- HSETNX: an event read twice (claimed from a silent consumer) is not owed twice.
    elseif alive[s] and redis.call('HSETNX', KEYS[3 * s + 1], did, data) == 1 then
      redis.call('ZADD', KEYS[3 * s], now_ms, did)
      redis.call('ZADD', KEYS[3 * s + 2], written_ms, did)
      scheduled = scheduled + 1
    end
  end
  i = i + k
  acked[#acked + 1] = eid
end
if #acked > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(acked)) end
return scheduled
