-- Claim queued messages for posting at the moment their rate slots are due: queued ->
-- sending in the same step that finds the trunk free (not halted, not backing off), the
-- campaign free (not paused, cancelled, scheduled later or expired), the number not opted
-- out, and the slot due. The caller writes each claimed request at once (claim at the
-- wire: docs/architecture.md §6, D4).
--
-- The trunk's rate (docs/architecture.md §5): slots are `interval` apart (pacing, GCRA); each caller
-- reserves its next slots here and comes back when they are due, so callers never race
-- for a slot. Slots nobody reserved that lie in the past (up to `catchup`) are free to
-- take: a late caller loses nothing. A hard cap keeps the units claimed in any `window`
-- (on Redis's clock) at the limit, whatever the lateness. Urgent messages (the trunk's lane)
-- take the slots first.
--
-- KEYS[1] rate hash   KEYS[2] window list   KEYS[3] halt flag   KEYS[4] backoff flag
-- KEYS[5] urgent lane   KEYS[6] events stream   KEYS[7] the trunk's rates ring
-- ARGV[1] owner number (the caller offers only indexes it does not have in flight)
-- ARGV[2] interval (us per unit)   ARGV[3] units per window
-- ARGV[4] window (us)   ARGV[5] catch-up (us)   ARGV[6] units reserved earlier, due now
-- ARGV[7] units to reserve next   ARGV[8] 's' to count segments, 'm' messages
-- ARGV[9] most messages to claim   ARGV[10] stream maxlen   ARGV[11] event base JSON
-- ARGV[12] number of batches, then per batch: cid, batch, n, and n message indexes
-- Returns {status, wake_us, leftover, cap_wait_us, claimed..., outcomes...} where status is
-- ok, halted or backoff; wake_us: when the reserved units are due (-1: none reserved);
-- leftover: due units not used because the cap was full (the caller keeps them);
-- claimed: a count, then per message cid, batch, index, destination, units, attempts,
-- source, text, fields ('' except for urgent messages); outcomes: a count, then per batch
-- cid, batch, examined (how many of its indexes were settled), outcome, value: outcome is
-- ok, paused, cancelled, expired, scheduled (value: its time) or missing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_s = tonumber(t[1])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'halted'} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'backoff'} end

local owner = tonumber(ARGV[1])
local interval, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local window, catchup = tonumber(ARGV[4]), tonumber(ARGV[5])
local due, want = tonumber(ARGV[6]), tonumber(ARGV[7])
local by_segment, room_msgs = ARGV[8] == 's', tonumber(ARGV[9])
local stream, maxlen, base = KEYS[6], ARGV[10], ARGV[11]

-- The hard cap: drop claims older than the window, then see what room is left.
local sum = tonumber(redis.call('HGET', KEYS[1], 'sum') or '0')
while true do
  local oldest = redis.call('LINDEX', KEYS[2], -1)
  if not oldest then sum = 0 break end
  local at, units = string.match(oldest, '^(%d+) (%d+)$')
  if tonumber(at) > now - window then break end
  redis.call('RPOP', KEYS[2])
  sum = sum - tonumber(units)
end
local room = limit - sum
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
local cap_wait = -1
-- Slots further in the past than the catch-up went unused: nobody had work for them, or
-- every worker was late. Counted (the trunk's `idle` field), then forgotten.
local idle = 0
-- After such a pause the trunk starts again with no more past slots than half the margin
-- between the pace and the cap (RateParams.margin_us) holds: the first requests of a burst
-- are slow on the wire (new connections) and arrive together with later ones, past the limit
-- in that second (docs/architecture.md D5). With no margin (SMSQ_RATE_HEADROOM 1, which
-- allows no lateness on the wire either), the whole catch-up.
if tat < now - catchup then
  if tat > 0 then idle = math.floor((now - catchup - tat) / interval) end
  local margin = limit * interval - window
  tat = now - (margin > 0 and math.min(catchup, margin / 2) or catchup)
end

-- Units to claim with: the caller's due ones first, then free slots in the past.
local function take(units)
  if units > room then
    local oldest = redis.call('LINDEX', KEYS[2], -1)
    -- With no older claim in the window, this call's own claims filled it: room comes back
    -- a window from now.
    cap_wait = oldest and tonumber(string.match(oldest, '^(%d+)')) + window - now or window
    return false
  end
  if due >= units then
    due = due - units
  else
    local from = tat
    if from + (units - due - 1) * interval > now then return false end
    tat = from + (units - due) * interval
    due = 0
  end
  room = room - units
  return true
end

local camps = {}
local function campaign(cid)
  local c = camps[cid]
  if c == nil then
    local h = redis.call('HMGET', campaign_key(cid), 'state', 'expires_at', 'send_at',
      'source', 'batch_size', 'text', 'references')
    if not h[5] then
      c = false
    else
      c = {state = h[1], expires = tonumber(h[2]), send_at = tonumber(h[3]) or 0,
        source = h[4], bsize = tonumber(h[5]), text = h[6], refs = h[7], posted = 0}
      if c.state == 'scheduled' and c.send_at <= now / 1000000 then
        redis.call('HSET', campaign_key(cid), 'state', 'active')
        c.state = 'active'
      end
    end
    camps[cid] = c
  end
  return c
end
-- Why a campaign's messages cannot be claimed now, or nil.
local function blocked(c)
  if not c then return 'missing' end
  if c.state == 'cancelled' or c.state == 'paused' then return c.state end
  -- Its time, not its state, keeps a scheduled campaign waiting (a pause and a resume
  -- before the time leave it waiting).
  if c.state == 'scheduled' or c.send_at > now / 1000000 then return 'scheduled' end
  if c.expires <= now / 1000000 then return 'expired' end
  return nil
end

local function end_message(cid, b, index, off, m, c, state)
  local dest = num(m.dest)
  m.state = state
  rec_write(cid, b, off, m)
  move(cid, QUEUED, state)
  local e = message_event(base, NAMES[state], cid, index, dest, c.source,
    reference_of(c.refs, cid, b, index))
  publish(stream, maxlen, cjson.encode(e))
  maybe_done(cid, now_s)
end
-- A cancelled or expired campaign: every queued message of the batch ends now, no slots spent.
local function end_batch(cid, b, c, state)
  local data = redis.call('GET', batch_key(cid, b))
  if not data then return end
  local first = b * c.bsize
  for i = 0, #data / R - 1 do
    if string.byte(data, i * R + 1) == QUEUED then
      local m = rec_unpack(string.sub(data, i * R + 1, i * R + R))
      end_message(cid, b, first + i, i * R, m, c, state)
    end
  end
end

local claimed, outcomes = {}, {}
local nclaimed = 0
-- Try to claim one message; returns 'claimed', 'skip' (not queued, or settled another way)
-- or 'stop' (no units or room left).
local function try(cid, b, index, c, urgent)
  local m, off = rec_read(cid, b, index, c.bsize)
  if not m then return 'skip' end
  -- Sending under the caller's own number yet offered again: the caller claimed it in a call
  -- whose reply it never got (a broken connection), so never posted it. It is claimed anew.
  local lost_reply = m.state == SENDING and be(m.id, 1, 4) == owner
  if m.state ~= QUEUED and not lost_reply then return 'skip' end
  local dest = num(m.dest)
  if redis.call('SISMEMBER', P .. 'optout:' .. num(m.dest % 65536), dest) == 1 then
    if lost_reply then
      -- Claimed, never written, opted out meanwhile.
      m.state = QUEUED
      move(cid, SENDING, QUEUED)
      pair_sending(c.source, dest, -1)
    end
    end_message(cid, b, index, off, m, c, SUPPRESSED)
    return 'skip'
  end
  -- A message longer than the whole limit spends all of it, or it could never go.
  local units = by_segment and math.min(math.max(m.frags, 1), limit) or 1
  if nclaimed >= room_msgs or not take(units) then return 'stop' end
  m.state = SENDING
  m.t1 = now_s
  m.id = tobe(owner, 4) .. string.rep('\0', 12)
  if not lost_reply then
    m.attempts = m.attempts + 1
    move(cid, QUEUED, SENDING)
    pair_sending(c.source, dest, 1)
  end
  rec_write(cid, b, off, m)
  c.posted = c.posted + 1
  nclaimed = nclaimed + 1
  local src, text, fields = '', '', ''
  if urgent then
    src, text = c.source, c.text
    fields = redis.call('HGET', fields_key(cid, b), index) or ''
    -- Not a batch the caller holds: its in-flight entry makes a crash recoverable.
    redis.call('HSETNX', INFLIGHT, cid .. '|' .. b .. '|' .. owner, now_s)
  end
  for _, v in ipairs({cid, b, index, dest, units, m.attempts, src, text, fields}) do
    claimed[#claimed + 1] = v
  end
  return 'claimed'
end

-- Urgent messages first.
while nclaimed < room_msgs do
  local ref = redis.call('LINDEX', KEYS[5], 0)
  if not ref then break end
  local cid, b, index = string.match(ref, '^(.*)|(%d+)|(%d+)$')
  local c = campaign(cid)
  local why = blocked(c)
  if why == 'cancelled' or why == 'expired' then
    local m, off = rec_read(cid, tonumber(b), tonumber(index), c.bsize)
    if m and m.state == QUEUED then
      end_message(cid, tonumber(b), tonumber(index), off, m, c,
        why == 'cancelled' and CANCELLED or EXPIRED)
    end
  elseif why == nil then
    if try(cid, tonumber(b), tonumber(index), c, true) == 'stop' then break end
  end
  -- Paused, scheduled or missing: its batch task takes it when it can be sent.
  redis.call('LPOP', KEYS[5])
end

-- Then the caller's batches, in order.
local pos = 13
local stopped = false
for _ = 1, tonumber(ARGV[12]) do
  local cid, b, n = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  local c = campaign(cid)
  local why = blocked(c)
  local examined, value = 0, ''
  if why == 'cancelled' or why == 'expired' then
    end_batch(cid, b, c, why == 'cancelled' and CANCELLED or EXPIRED)
    examined = n
  elseif why == 'scheduled' then
    value = c.send_at
  elseif why == nil and not stopped then
    for i = 1, n do
      if try(cid, b, tonumber(ARGV[pos + 2 + i]), c, false) == 'stop' then
        stopped = true
        break
      end
      examined = i
    end
  end
  for _, v in ipairs({cid, b, examined, why or 'ok', value}) do outcomes[#outcomes + 1] = v end
  pos = pos + 3 + n
end

-- Record what was claimed, for the cap and for each campaign's send rate.
local used = limit - sum - room
if used > 0 then
  redis.call('LPUSH', KEYS[2], num(now) .. ' ' .. used)
  redis.call('PEXPIRE', KEYS[2], math.floor(window / 1000) + 1000)
  sum = sum + used
end
for cid, c in pairs(camps) do
  if c and c.posted > 0 then
    -- A ring of seconds: a slot last used in another second starts again.
    local key, slot = posted_key(cid), now_s % POSTED_RING
    if tonumber(redis.call('HGET', key, 's' .. slot)) == now_s then
      redis.call('HINCRBY', key, 'n' .. slot, c.posted)
    else
      redis.call('HSET', key, 's' .. slot, now_s, 'n' .. slot, c.posted)
    end
  end
end

if nclaimed > 0 then rates_add(KEYS[7], now_s, nclaimed, 0) end

-- Due units left over: kept by the caller when the cap was full; otherwise given back, so
-- the next caller can use them.
local leftover = 0
if due > 0 then
  if cap_wait >= 0 then
    leftover = due
  else
    tat = math.max(tat - due * interval, now - catchup)
  end
end
-- Reserve the caller's next units.
local wake = -1
if want > 0 then
  local start = math.max(tat, now)
  tat = start + want * interval
  wake = start + (want - 1) * interval - now
end
redis.call('HSET', KEYS[1], 'tat', num(tat), 'sum', sum)
if idle > 0 then redis.call('HINCRBY', KEYS[1], 'idle', idle) end
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 60000)

local reply = {'ok', wake, leftover, cap_wait, nclaimed}
for _, v in ipairs(claimed) do reply[#reply + 1] = v end
reply[#reply + 1] = #outcomes / 5
for _, v in ipairs(outcomes) do reply[#reply + 1] = v end
return reply
