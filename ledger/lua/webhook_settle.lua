-- Record the outcomes of deliveries the caller leased (webhook_claim.lua). Each applies only
-- while the caller's lease holds (the due time is still the leased one): once a lease ends
-- another process may have taken the delivery, and its outcome is that process's to record.
-- KEYS[1] due set   KEYS[2] deliveries hash   KEYS[3] attempts hash   KEYS[4] failures stream
-- KEYS[5] owed set
-- ARGV[1] failures kept (approximate)
-- then per delivery 5 values: id, the lease's end (ms), outcome, a, b:
--   'delivered'  -                -
--   'retry'      next due (ms)    'attempts first_attempt_ms'
--   'release'    -                -    (never attempted: due again now)
--   'failed'     -                JSON of the failure (webhook, url, attempts, error, times)
-- Returns how many outcomes applied.
local applied = 0
for i = 2, #ARGV, 5 do
  local did, leased, outcome = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], did)
  if score and tonumber(score) == leased then
    applied = applied + 1
    if outcome == 'retry' then
      redis.call('ZADD', KEYS[1], tonumber(ARGV[i + 3]), did)
      redis.call('HSET', KEYS[3], did, ARGV[i + 4])
    elseif outcome == 'release' then
      local t = redis.call('TIME')
      redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), did)
    else
      if outcome == 'failed' then
        local data = redis.call('HGET', KEYS[2], did) or ''
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'failure', ARGV[i + 4],
          'event', data)
      end
      redis.call('ZREM', KEYS[1], did)
      redis.call('HDEL', KEYS[2], did)
      redis.call('HDEL', KEYS[3], did)
      redis.call('ZREM', KEYS[5], did)
    end
  end
end
return applied
