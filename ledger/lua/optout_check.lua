-- Which of many numbers are on the opt-out list, in one call instead of a SISMEMBER each
-- (ledger/optouts.py on_list). Read only.
-- ARGV[1] numbers (E.164 digits) separated by commas.
-- Returns a string with a byte per number: '1' if it is on the opt-out list, else '0'.
local found, n = {}, 0
for number in string.gmatch(ARGV[1], '%d+') do
  n = n + 1
  local key = P .. 'optout:' .. num(tonumber(number) % 65536)
  found[n] = redis.call('SISMEMBER', key, number) == 1 and '1' or '0'
end
return table.concat(found)
