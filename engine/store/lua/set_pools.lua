-- set_pools: set (or, with 0 units, end) pools of rows at one location: units of a row kept
-- for one sales channel (channel_available in _prelude.lua says what they keep). A pool
-- changed or ended leaves every hold as it is: what its channel holds stays held.
-- KEYS[1] {L}:p  the rows' pools: sku -> "channel\tunits\tfallback\n"...
-- ARGV: n, then n groups of 4: sku, channel, units, fallback ('1' or '0')
-- Returns the number of pools changed
local n, changed = tonumber(ARGV[1]), 0
for j = 0, n - 1 do
  local sku, ch, units, fb = ARGV[2 + j * 4], ARGV[3 + j * 4], ARGV[4 + j * 4], ARGV[5 + j * 4]
  local kept, old = {}, nil
  for c, u, f in string.gmatch(redis.call('HGET', KEYS[1], sku) or '', '([^\t\n]+)\t(%d+)\t([01])\n') do
    if c == ch then
      old = u .. '\t' .. f
    else
      kept[#kept + 1] = c .. '\t' .. u .. '\t' .. f .. '\n'
    end
  end
  local new = nil
  if tonumber(units) > 0 then new = units .. '\t' .. fb end
  if new ~= old then
    changed = changed + 1
    if new then kept[#kept + 1] = ch .. '\t' .. new .. '\n' end
    if #kept > 0 then
      redis.call('HSET', KEYS[1], sku, table.concat(kept))
    else
      redis.call('HDEL', KEYS[1], sku)
    end
  end
end
return changed
