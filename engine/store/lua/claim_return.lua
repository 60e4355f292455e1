-- claim_return: a return's claim on the reservation it names, kept in the reservation's
-- directory: the returns of each sku under a reservation never exceed what it bought, across
-- all its returns. One script on the directory's slot, so concurrent returns of one
-- reservation are checked and counted one after the other: the count is exact.
-- KEYS[1] res:{<id>}  (fields: l its lines "location\tsku\tqty\n"...; rt:<return id> a
--   return's fingerprint; rq:<sku> units of sku returned under it so far)
-- ARGV: return_id, fingerprint, undo ('1': take back this return's claim, made by this very
--   fingerprint; a return that then met another of its id at its location), n, then n
--   pairs (sku, qty)
-- Returns {'CLAIMED'} | {'SAME'} (claimed before, by the same return) | {'CONFLICT'} (the id
--   claimed with other lines) | {'MISSING'} (no such reservation) | {'OVER', sku, units of
--   it the reservation may still return} | {'UNDONE'}
local dir, rid, fp, undo, n = KEYS[1], ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local field = 'rt:' .. rid
local had = redis.call('HGET', dir, field)
if undo then
  if had ~= fp then return {'UNDONE'} end
  for j = 0, n - 1 do
    local f = 'rq:' .. ARGV[5 + 2 * j]
    if redis.call('HINCRBY', dir, f, -tonumber(ARGV[6 + 2 * j])) <= 0 then redis.call('HDEL', dir, f) end
  end
  redis.call('HDEL', dir, field)
  return {'UNDONE'}
end
local lines = redis.call('HGET', dir, 'l')
if not lines then return {'MISSING'} end
if had then
  if had == fp then return {'SAME'} end
  return {'CONFLICT'}
end
-- what it bought: the lines held (a kit's components), not the lines as sent after them
-- ('='-marked, when bundles made them other: codecs.encode_dir_lines; no id holds a '=')
local held = string.match(lines, '^[^=]*')
local bought = {}
for _, sku, qty in string.gmatch(held, '([^\t\n]+)\t([^\t\n]+)\t(%d+)\n') do
  bought[sku] = (bought[sku] or 0) + tonumber(qty)
end
for j = 0, n - 1 do
  local sku, q = ARGV[5 + 2 * j], tonumber(ARGV[6 + 2 * j])
  local left = (bought[sku] or 0) - tonumber(redis.call('HGET', dir, 'rq:' .. sku) or '0')
  if q > left then return {'OVER', sku, left} end
end
for j = 0, n - 1 do
  redis.call('HINCRBY', dir, 'rq:' .. ARGV[5 + 2 * j], tonumber(ARGV[6 + 2 * j]))
end
redis.call('HSET', dir, field, fp)
return {'CLAIMED'}
