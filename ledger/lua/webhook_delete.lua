-- Delete a webhook subscription with its secret and every delivery still owed to it.
-- KEYS[1] subscriptions hash   KEYS[2] secrets hash   KEYS[3] its due set
-- KEYS[4] its deliveries hash   KEYS[5] its attempts hash   KEYS[6] its owed set
-- ARGV[1] subscription id
-- Returns 1 if it existed, else 0.
local existed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return existed
