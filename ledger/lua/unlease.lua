-- A leased parked batch was published: remove it, unless it was parked again meanwhile (its
-- score moved: a new reason to wait, which must not be lost) or the lease is not ours.
-- KEYS[1] parked batches   KEYS[2] its lease key
-- ARGV[1] member   ARGV[2] token   ARGV[3] the score it was leased at
-- Returns 1 if removed, 0 if left in place.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
