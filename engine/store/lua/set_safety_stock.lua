-- set_safety_stock: set the units kept back from sale on rows of one location.
-- KEYS[1..] {L}:s:<b> stock buckets
-- ARGV: n, then n triples (sku, safety_stock, stock key index), then the location's change
--   channel (write_row)
-- Returns the number of rows changed
local n, changed = tonumber(ARGV[1]), 0
for j = 0, n - 1 do
  local sku, qty, k = ARGV[2 + j * 3], tonumber(ARGV[3 + j * 3]), tonumber(ARGV[4 + j * 3])
  local r = read_row(KEYS[k], sku)
  if r[3] ~= qty then
    r[3] = qty
    write_row(KEYS[k], sku, r)
    changed = changed + 1
  end
end
return changed
