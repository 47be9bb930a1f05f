-- Stop every worker from posting and raise the alert once: a halt after a 401 (no TTL; a
-- probe or an operator lifts it) or a backoff while DIDWW is unavailable (with a TTL).
-- The probe lock is taken too, so the first probe waits one interval.
-- KEYS[1] halt or backoff flag   KEYS[2] events stream   KEYS[3] probe lock
-- ARGV[1] why (JSON)   ARGV[2] alert event JSON   ARGV[3] stream maxlen
-- ARGV[4] probe interval (ms)   ARGV[5] flag TTL (ms), 0 for none
-- Returns 1 when this call set the flag, 0 when it was already set.
local set
if tonumber(ARGV[5]) > 0 then
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[5])
else
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if set then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2])
  redis.call('SET', KEYS[3], 'halt', 'PX', ARGV[4])
  return 1
end
return 0
