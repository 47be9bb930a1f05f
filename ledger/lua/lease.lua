-- Take a parked batch to publish it: one caller gets it, for lease_s. It is removed once
-- published; if its publisher fails first, it is due again when the lease ends (a task
-- published twice costs nothing: claims are atomic).
-- KEYS[1] parked batches   ARGV[1] member cid|batch   ARGV[2] now (s)   ARGV[3] lease (s)
-- ARGV[4] '1' to take it even if not due yet (an operator's resume)
-- Returns 1 if this caller took it.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local now = tonumber(ARGV[2])
if tonumber(score) > now and ARGV[4] ~= '1' then return 0 end
-- A lease someone else holds is not taken, even by force.
if redis.call('EXISTS', KEYS[1] .. ':lease:' .. ARGV[1]) == 1 then return 0 end
redis.call('SET', KEYS[1] .. ':lease:' .. ARGV[1], '1', 'PX', math.floor(tonumber(ARGV[3]) * 1000))
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
