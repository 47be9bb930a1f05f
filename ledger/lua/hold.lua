-- A worker process takes a batch: its in-flight entry starts beating now (Redis's clock).
-- KEYS[1] in-flight hash   ARGV[1] field cid|batch|owner
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], t[1])
return tonumber(t[1])
