-- Stop every worker from posting (DIDWW answered 401) and raise the alert once.
-- The probe lock is taken too, so the first credentials probe waits one interval.
-- KEYS[1] halt flag   KEYS[2] events stream   KEYS[3] probe lock
-- ARGV[1] why (JSON)   ARGV[2] alert event JSON   ARGV[3] stream maxlen
-- ARGV[4] probe interval (ms)
-- Returns 1 when this call set the flag, 0 when it was already set.
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2])
  redis.call('SET', KEYS[3], 'halt', 'PX', ARGV[4])
  return 1
end
return 0
