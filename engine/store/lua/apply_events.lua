-- apply_events: apply a batch of stock events at one location, each at most once and with
-- a result that does not depend on arrival order (I5), never re-subtracting a sale the
-- engine committed itself (I6).
--   COUNT q at t: on_hand = q + every logged change after t; stale if t < as_of, or t is
--     outside the ordering window. Two counts at the same t: the larger q wins, so that
--     arrival order never matters.
--   DELTA d at t: stale if t <= as_of (that count includes it); else on_hand += d, logged.
--   DELTA echoing a committed reservation line at this location: recognised, no effect.
--   DELTA echoing a line still HELD here (the store reported the sale before the commit
--     landed): no effect now, and kept on the part; the commit then subtracts the sale once,
--     and if the part is released or expires instead, the kept echo is applied as the DELTA
--     it is (see unhold in _prelude.lua).
-- on_hand is never clamped: clamping would make the result depend on arrival order.
-- States (engine/store/keys.py): an event of units in another state names that state's row
-- ("sku#<state>") as its sku, and is applied to it by the same rules. MOVE q at t from row A
-- to row B (one sku, two states): a DELTA of -q at t on A and of +q at t on B, under one
-- event id, each stale or not by its own row's count: so every state's units depend only on
-- which events arrived (I5 per state), and when neither side is stale the units are
-- conserved. APPLIED if either side was, else STALE. Moved out of sellable, the row may be
-- left short, as by a negative DELTA: the holds stay (I3) and it is reported.
-- A full count that zeroes what it does not list (ReconcileCount, MISSING_SKUS_ZERO) at time
-- F says every sellable row of L, even one with no row yet, was 0 at F unless listed: so for
-- every sellable row, a DELTA at or before F is stale and a COUNT before F is stale, as if
-- each had been counted at F (it zeroes no state row, so its mark covers none). {L}:f keeps the latest such F; the count sets it before it reads the
-- rows to zero, so a row made meanwhile is covered too.
-- An event its source numbers (sequence > 0: 1, 2, 3, ... per source and location) is told
-- from a duplicate by its number instead of its id: {L}:q keeps the source's highest number
-- seen, and {L}:g:<source> the numbers below it not seen yet, as ranges (gaps). A number
-- above the highest, or inside a gap, is new; any other is a duplicate. So a source that
-- sends in order costs one hash field, however many events it sends, and one that reorders
-- costs a range per hole until it fills. A gap still open grace_ms after it opened is
-- returned once, to be reported; one open longer than the window is forgotten (its events
-- are past any platform's retries), and past MAX_GAPS open at once the lowest is (returned
-- then, if it was not reported yet).
-- KEYS[1] {L}:e  event ids seen, scored by arrival (ms);  KEYS[2] {L}:f  latest full count (ms)
--   KEYS[3] {L}:q  per source: its highest number seen, and "<source>\tr": the number below
--   which every gap has been reported
--   KEYS[4..] {L}:s:<b> stock buckets, {L}:d:<b> change logs, {L}:r:<id> parts named by
--   echoes, {L}:g:<source> gaps, member "from\tto\topened_ms" scored by from
-- ARGV: now_ms, window_ms, n, full_count_at (0: none), grace_ms, then n groups of 11:
--   event_id, kind ('COUNT'|'DELTA'|'MOVE'), row (sku or "sku#state"; a MOVE's from), qty,
--   source_time_ms, stock idx, log idx, part idx (0: none), sequence (0: none),
--   gaps idx (0: none), a MOVE's to row ('' for other kinds)
--   then the location's change channel (write_row)
-- Returns {{outcome per event}, {sku, on_hand, reserved for every row left short: holding
-- more than it has}, {source, from, to for every gap reported now}}
local now, window, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local grace = tonumber(ARGV[5])
local horizon = now - window
local seen, marks = KEYS[1], KEYS[3]
local MAX_GAPS = 1000
local full = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[4]) > full then
  full = tonumber(ARGV[4])
  redis.call('SET', KEYS[2], full)
end
redis.call('ZREMRANGEBYSCORE', seen, '-inf', horizon)

local pruned = {}
local function log_key(k)
  if not pruned[k] then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', horizon)
    pruned[k] = true
  end
  return KEYS[k]
end

-- The sum of logged changes of one sku after time t; with drop, forget those up to t.
local function changes_after(log, sku, t, drop)
  local sum, prefix = 0, sku .. '\t'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '(' .. t, '+inf')) do
    if string.sub(m, 1, #prefix) == prefix then sum = sum + tonumber(string.match(m, '\t(-?%d+)$')) end
  end
  if drop then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '-inf', t)) do
      if string.sub(m, 1, #prefix) == prefix then redis.call('ZREM', log, m) end
    end
  end
  return sum
end

-- Is this DELTA the store's report of a sale under a reservation part here? A report on a
-- part still HELD is kept on it, for its release or expiry (see unhold).
local function is_echo(part, id, sku, d, t)
  local cur = redis.call('HMGET', part, 's', 'l', 'e')
  if cur[1] ~= 'COMMITTED' and cur[1] ~= 'HELD' then return false end
  for _, ln in ipairs(parse_lines(cur[2])) do
    if ln[1] == sku then
      if cur[1] == 'HELD' then
        local kept = string.format('%s\t%d\t%d\t%s\n', sku, d, t, id)
        redis.call('HSET', part, 'e', (cur[3] or '') .. kept)
      end
      return true
    end
  end
  return false
end

-- The full count's mark, for a row: sellable rows only.
local function mark_of(sku)
  if string.find(sku, '#', 1, true) then return 0 end
  return full
end

local function count(key, log, sku, r, q, t)
  if t <= horizon or t < r[5] or t < mark_of(sku) then return 'STALE' end
  if t == r[5] and q <= r[1] - changes_after(log, sku, t, false) then return 'STALE' end
  r[1] = q + changes_after(log, sku, t, true)
  r[5] = t
  write_row(key, sku, r)
  return 'APPLIED'
end

local function delta(key, log, id, sku, r, d, t)
  if t <= r[5] or t <= mark_of(sku) then return 'STALE' end
  r[1] = r[1] + d
  write_row(key, sku, r)
  redis.call('ZADD', log, t, sku .. '\te:' .. id .. '\t' .. d)  -- e: events, c: commits
  return 'APPLIED'
end

-- Sequence numbers are below 2^53, exact in Lua's numbers; '%d' writes them whole, where
-- tostring would round them to 14 digits.
local function int(x) return string.format('%d', x) end

local function add_gap(gaps, from, to, opened)
  redis.call('ZADD', gaps, int(from), int(from) .. '\t' .. int(to) .. '\t' .. opened)
end

local given_up = {}  -- gaps dropped past MAX_GAPS before they were reported: src, from, to

-- Is number s of this source new at L? It is then marked seen.
local function first_seen(src, gaps, s)
  local top = tonumber(redis.call('HGET', marks, src) or '0')
  if s > top then
    if s > top + 1 then
      add_gap(gaps, top + 1, s - 1, int(now))
      if redis.call('ZCARD', gaps) > MAX_GAPS then
        -- given up: reported now unless it was already (its numbers then count as seen)
        local lowest = redis.call('ZPOPMIN', gaps)[1]
        local from, to = string.match(lowest, '^(%d+)\t(%d+)\t')
        if tonumber(from) >= tonumber(redis.call('HGET', marks, src .. '\tr') or '0') then
          given_up[#given_up + 1] = src
          given_up[#given_up + 1] = from
          given_up[#given_up + 1] = to
        end
      end
    end
    redis.call('HSET', marks, src, int(s))
    return true
  end
  local g = redis.call('ZREVRANGEBYSCORE', gaps, int(s), '-inf', 'LIMIT', 0, 1)[1]
  if not g then return false end
  local from, to, opened = string.match(g, '^(%d+)\t(%d+)\t(%d+)$')
  from, to = tonumber(from), tonumber(to)
  if to < s then return false end
  redis.call('ZREM', gaps, g)
  if from < s then add_gap(gaps, from, s - 1, opened) end
  if s < to then add_gap(gaps, s + 1, to, opened) end
  return true
end

-- The gaps of a source open longer than grace and not reported yet (gaps open in the order
-- of their numbers); those open longer than the window are forgotten.
local function due_gaps(src, gaps, out)
  for _, g in ipairs(redis.call('ZRANGE', gaps, 0, 9)) do
    if tonumber(string.match(g, '(%d+)$')) > horizon then break end
    redis.call('ZREM', gaps, g)
  end
  local field = src .. '\tr'
  local mark = tonumber(redis.call('HGET', marks, field) or '0')
  local reported = mark
  for _, g in ipairs(redis.call('ZRANGEBYSCORE', gaps, int(mark), '+inf', 'LIMIT', 0, 100)) do
    local from, to, opened = string.match(g, '^(%d+)\t(%d+)\t(%d+)$')
    if tonumber(opened) > now - grace then break end
    out[#out + 1] = src
    out[#out + 1] = from
    out[#out + 1] = to
    reported = tonumber(to) + 1
  end
  if reported > mark then redis.call('HSET', marks, field, int(reported)) end
end

local outcomes, short, touched, sources, reported = {}, {}, {}, {}, {}
for j = 0, n - 1 do
  local p = 6 + j * 11
  local id, kind, sku = ARGV[p], ARGV[p + 1], ARGV[p + 2]
  local qty, t = tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
  local key, part = KEYS[tonumber(ARGV[p + 5])], tonumber(ARGV[p + 7])
  local s, numbered = tonumber(ARGV[p + 8]), nil
  if s > 0 then
    local src, gaps = string.match(id, '^([^|]+)|'), KEYS[tonumber(ARGV[p + 9])]
    sources[src] = gaps
    numbered = first_seen(src, gaps, s)
  end
  local out
  if numbered == false or (numbered == nil and redis.call('ZSCORE', seen, id)) then
    out = 'DUPLICATE'
  elseif kind == 'DELTA' and part > 0 and is_echo(KEYS[part], id, sku, qty, t) then
    out = 'ECHO'
  else
    local log, r = log_key(tonumber(ARGV[p + 6])), read_row(key, sku)
    if kind == 'COUNT' then
      out = count(key, log, sku, r, qty, t)
    elseif kind == 'MOVE' then
      local to = ARGV[p + 10]
      local from = delta(key, log, id, sku, r, -qty, t)
      local into = delta(key, log, id, to, read_row(key, to), qty, t)
      out = (from == 'APPLIED' or into == 'APPLIED') and 'APPLIED' or 'STALE'
      if from == 'APPLIED' then touched[sku] = key end
      sku = into == 'APPLIED' and to or sku  -- `touched` below: the rows that changed
    else
      out = delta(key, log, id, sku, r, qty, t)
    end
    if out == 'APPLIED' then touched[sku] = key end
  end
  if out ~= 'DUPLICATE' and numbered == nil then redis.call('ZADD', seen, now, id) end
  outcomes[j + 1] = out
end

for sku, key in pairs(touched) do
  local r = read_row(key, sku)
  if r[2] > 0 and r[1] < r[2] then  -- a hold at risk: a row below zero with none is not
    short[#short + 1] = sku
    short[#short + 1] = r[1]
    short[#short + 1] = r[2]
  end
end
for _, x in ipairs(given_up) do reported[#reported + 1] = x end
for src, gaps in pairs(sources) do due_gaps(src, gaps, reported) end
return {outcomes, short, reported}
