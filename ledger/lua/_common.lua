-- Helpers prepended to every ledger script by ledger/scripts.py.
-- A message record is "state|destination|extra" (extra: DIDWW id once accepted, the post time
-- while unknown, "claim_time@owner" while sending).
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

-- Keys of messages found through an index are built here, the way ledger/keys.py builds them
-- (tests/unit/test_ledger.py checks they agree). smsq runs on one Redis, not a Cluster.
local P = 'smsq:'
local function batch_key(cid, batch) return P .. 'campaign:' .. cid .. ':batch:' .. batch end
local function counts_key(cid) return P .. 'campaign:' .. cid .. ':counts' end
local function didww_key(id) return P .. 'didww:' .. id end
local function orphan_key(id) return P .. 'orphan:' .. id end
local function orphans_by_pair(src, dst) return P .. 'orphans:' .. src .. ':' .. dst end
local function unknown_by_pair(src, dst) return P .. 'unknown:' .. src .. ':' .. dst end
local ORPHANS, STATS = P .. 'orphans', P .. 'stats'

-- The member of a sorted set whose score is nearest t within window, among those that
-- accept(member) approves; members accept() refuses are stale and removed.
local function nearest(zkey, t, window, accept)
  local found = redis.call('ZRANGEBYSCORE', zkey, t - window, t + window, 'WITHSCORES')
  local best, best_gap = nil, nil
  for i = 1, #found, 2 do
    local member, gap = found[i], math.abs(tonumber(found[i + 1]) - t)
    if accept(member) then
      if best == nil or gap < best_gap then best, best_gap = member, gap end
    else
      redis.call('ZREM', zkey, member)
    end
  end
  return best
end

-- Settle an unknown message with a callback matched by source, destination and time (its
-- DIDWW id never reached us): unknown -> sent|failed, index the id so a repeat of the callback
-- is a duplicate, publish the callback's event with the message's ids.
-- m: {cid, batch, index, dest}; cb: {id, state, event (table)}; o: options from the caller.
local function settle_unknown(m, cb, o)
  redis.call('HSET', batch_key(m.cid, m.batch), m.index, cb.state .. '|' .. m.dest .. '|' .. cb.id)
  move(counts_key(m.cid), 'unknown', cb.state)
  redis.call('SET', didww_key(cb.id), m.cid .. '|' .. m.batch .. '|' .. m.index, 'EX', o.didww_ttl)
  cb.event['campaign_id'] = m.cid
  cb.event['message_id'] = m.cid .. '-' .. m.index
  cb.event['matched_by'] = 'source, destination and time'
  publish(o.stream, o.maxlen, cjson.encode(cb.event), cb.state)
  redis.call('HINCRBY', STATS, 'callbacks_matched', 1)
end

-- sending -> unknown: the request may have reached DIDWW but its answer did not reach us.
-- The message is indexed by source and destination, so that a callback nobody claims can be
-- matched to it later (settle.lua). o: {stream, maxlen, orphan_ttl}.
local function to_unknown(m, source, posted_at, event, o)
  redis.call('HSET', batch_key(m.cid, m.batch), m.index, 'unknown|' .. m.dest .. '|' .. posted_at)
  move(counts_key(m.cid), 'sending', 'unknown')
  publish(o.stream, o.maxlen, cjson.encode(event), 'unknown')
  local ukey = unknown_by_pair(source, m.dest)
  redis.call('ZADD', ukey, tonumber(posted_at), m.cid .. '|' .. m.batch .. '|' .. m.index)
  redis.call('EXPIRE', ukey, o.orphan_ttl)
end
