-- Take a parked batch to publish it: one caller gets it, for lease_s, under its token. The
-- caller removes it with unlease.lua once published; if the caller fails first, the batch is
-- due again when the lease ends (a task published twice costs nothing: claims are atomic).
-- KEYS[1] parked batches   KEYS[2] its lease key
-- ARGV[1] member cid|batch   ARGV[2] lease (s)   ARGV[3] '1' to take it even if not due yet
-- (an operator's resume)   ARGV[4] token
-- Returns the score it was leased at (a whole number of seconds, as text, so unlease.lua can
-- compare it exactly), or false if this caller did not take it.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return false end
local t = redis.call('TIME')
local now = tonumber(t[1])
if tonumber(score) > now + tonumber(t[2]) / 1000000 and ARGV[3] ~= '1' then return false end
-- A lease someone else holds is not taken, even by force.
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'EX', lease)
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
return tostring(now + lease)
