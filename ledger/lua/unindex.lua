-- Remove a purged campaign's entries from DIDWW-id index buckets.
-- KEYS: the bucket keys to filter   ARGV[1] campaign id
-- Returns the number of entries removed.
local mine = cid_bytes(ARGV[1])
local removed = 0
for _, key in ipairs(KEYS) do
  local s = redis.call('GET', key)
  if s then
    local keep = {}
    for i = 1, #s, ENTRY do
      if string.sub(s, i + 16, i + 23) == mine then
        removed = removed + 1
      else
        keep[#keep + 1] = string.sub(s, i, i + ENTRY - 1)
      end
    end
    if #keep == 0 then
      redis.call('DEL', key)
    elseif #keep * ENTRY < #s then
      redis.call('SET', key, table.concat(keep))
    end
  end
end
return removed
