-- Add numbers to the opt-out list, or remove them, keeping its count.
-- KEYS[1] count key   ARGV[1] 'add' or 'remove'   ARGV[2..] numbers (E.164 digits)
-- Returns how many were added or removed (already there, or not there, count 0).
local changed = 0
for i = 2, #ARGV do
  local n = tonumber(ARGV[i])
  local key = P .. 'optout:' .. num(n % 65536)
  if ARGV[1] == 'add' then
    changed = changed + redis.call('SADD', key, ARGV[i])
  else
    changed = changed + redis.call('SREM', key, ARGV[i])
  end
end
if changed > 0 then
  redis.call('INCRBY', KEYS[1], ARGV[1] == 'add' and changed or -changed)
end
return changed
