-- set_pools: set (or, with 0 units, end) pools of rows at one location: units of a row kept
-- for one sales channel (channel_available in _prelude.lua says what they keep). All or
-- nothing: a pool may not keep free more units than the row has that no other pool keeps
-- (its free units: those its channel does not hold); shrinking or ending one always may.
-- A pool changed or ended leaves every hold as it is: what its channel holds stays held.
-- KEYS[1] {L}:p  the rows' pools: sku -> "channel\tunits\tfallback\n"...
-- KEYS[2] {L}:h  units held per row and channel;  KEYS[3..] {L}:s:<b> stock buckets
-- ARGV: mode ('set', or 'check': the checks only, nothing written: a call of pools at
--   several locations checks them all before it sets any), n, then n groups of 5: sku,
--   channel, units, fallback ('1' or '0'), stock key index, then the location's change
--   channel (write_row: a row whose pools change is written, its version moved, and its
--   message carries its pools and what each pool's channel holds: pools_note)
-- Returns {'OK', pools changed (0 for a check)} | {'OVER', sku, channel, the most units it
--   may keep now}
local n = tonumber(ARGV[2])

local function held_by(sku, c)
  return tonumber(redis.call('HGET', KEYS[2], sku .. '\t' .. c) or '0')
end

-- Each pool's entry as stored: the row's others, and its own "units\tfallback" (or nil).
local function entries(sku, ch)
  local kept, own = {}, nil
  for c, u, f in string.gmatch(redis.call('HGET', KEYS[1], sku) or '', '([^\t\n]+)\t(%d+)\t([01])\n') do
    if c == ch then own = u .. '\t' .. f else kept[#kept + 1] = {c, u, f} end
  end
  return kept, own
end

-- First every check, counting what the call's earlier pools of a row already add to it.
local added = {}
for j = 0, n - 1 do
  local p = 3 + j * 5
  local sku, ch, units = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2])
  local r = read_row(KEYS[tonumber(ARGV[p + 4])], sku)
  local kept, own = entries(sku, ch)
  local others = added[sku] or 0
  for _, e in ipairs(kept) do others = others + math.max(tonumber(e[2]) - held_by(sku, e[1]), 0) end
  local held = held_by(sku, ch)
  local was = 0
  if own then was = math.max(tonumber(string.match(own, '^(%d+)')) - held, 0) end
  local want = math.max(units - held, 0)
  local room = math.max(available(r) - others, 0)
  if want > was and want > room then return {'OVER', sku, ch, held + room} end
  added[sku] = (added[sku] or 0) + want - was
end

-- Then every write.
if ARGV[1] == 'check' then return {'OK', 0} end
local changed = 0
for j = 0, n - 1 do
  local p = 3 + j * 5
  local sku, ch, units, fb = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2]), ARGV[p + 3]
  local kept, own = entries(sku, ch)
  local text = {}
  for _, e in ipairs(kept) do
    text[#text + 1] = e[1] .. '\t' .. e[2] .. '\t' .. e[3] .. '\n'
  end
  local new = nil
  if units > 0 then new = units .. '\t' .. fb end
  if new ~= own then
    changed = changed + 1
    if new then text[#text + 1] = ch .. '\t' .. new .. '\n' end
    if #text > 0 then redis.call('HSET', KEYS[1], sku, table.concat(text)) else redis.call('HDEL', KEYS[1], sku) end
    local stock = KEYS[tonumber(ARGV[p + 4])]
    write_row(stock, sku, read_row(stock, sku), pools_note(KEYS[1], KEYS[2], sku))
  end
end
return {'OK', changed}
