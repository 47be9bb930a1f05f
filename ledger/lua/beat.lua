-- A worker process's heartbeat for the batch it is sending, on Redis's clock.
-- KEYS[1] in-flight hash   ARGV[1] field cid|batch|owner
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], t[1])
return tonumber(t[1])
