-- Helpers prepended to every ledger script by ledger/scripts.py.
-- A message record is "state|destination|extra" (extra: DIDWW id, or a time, or empty).
local function split(record)
  local state, dest, extra = string.match(record, '^([^|]*)|([^|]*)|?(.*)$')
  return state, dest, extra
end

local function move(counts_key, src, dst)
  redis.call('HINCRBY', counts_key, src, -1)
  redis.call('HINCRBY', counts_key, dst, 1)
end

-- Publish an event whose fields Python built, with its type set here.
local function publish(stream, maxlen, base_json, event_type)
  local event = cjson.decode(base_json)
  event['type'] = event_type
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', cjson.encode(event))
end
