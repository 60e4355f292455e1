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
-- A full count that zeroes what it does not list (ReconcileCount, MISSING_SKUS_ZERO) at time
-- F says every row of L, even one with no row yet, was 0 at F unless listed: so for every
-- row, a DELTA at or before F is stale and a COUNT before F is stale, as if each row had
-- been counted at F. {L}:f keeps the latest such F; the count sets it before it reads the
-- rows to zero, so a row made meanwhile is covered too.
-- KEYS[1] {L}:e  event ids seen, scored by arrival (ms);  KEYS[2] {L}:f  latest full count (ms)
--   KEYS[3..] {L}:s:<b> stock buckets, {L}:d:<b> change logs, {L}:r:<id> parts named by echoes
-- ARGV: now_ms, window_ms, n, full_count_at (0: none), then n groups of 8:
--   event_id, kind ('COUNT'|'DELTA'), sku, qty, source_time_ms, stock idx, log idx, part idx (0: none)
--   then the location's change channel (write_row)
-- Returns {{outcome per event}, {sku, on_hand, reserved for every row left short: holding
-- more than it has}}
local now, window, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local horizon = now - window
local seen = KEYS[1]
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

local function count(key, log, sku, r, q, t)
  if t <= horizon or t < r[5] or t < full then return 'STALE' end
  if t == r[5] and q <= r[1] - changes_after(log, sku, t, false) then return 'STALE' end
  r[1] = q + changes_after(log, sku, t, true)
  r[5] = t
  write_row(key, sku, r)
  return 'APPLIED'
end

local function delta(key, log, id, sku, r, d, t)
  if t <= r[5] or t <= full then return 'STALE' end
  r[1] = r[1] + d
  write_row(key, sku, r)
  redis.call('ZADD', log, t, sku .. '\te:' .. id .. '\t' .. d)  -- e: events, c: commits
  return 'APPLIED'
end

local outcomes, short, touched = {}, {}, {}
for j = 0, n - 1 do
  local p = 5 + j * 8
  local id, kind, sku = ARGV[p], ARGV[p + 1], ARGV[p + 2]
  local qty, t = tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
  local key, part = KEYS[tonumber(ARGV[p + 5])], tonumber(ARGV[p + 7])
  local out
  if redis.call('ZSCORE', seen, id) then
    out = 'DUPLICATE'
  elseif kind == 'DELTA' and part > 0 and is_echo(KEYS[part], id, sku, qty, t) then
    out = 'ECHO'
  else
    local log, r = log_key(tonumber(ARGV[p + 6])), read_row(key, sku)
    if kind == 'COUNT' then
      out = count(key, log, sku, r, qty, t)
    else
      out = delta(key, log, id, sku, r, qty, t)
    end
    if out == 'APPLIED' then touched[sku] = key end
  end
  if out ~= 'DUPLICATE' then redis.call('ZADD', seen, now, id) end
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
return {outcomes, short}
