-- record_return: a customer's return at one location, once per return id: each line's units
-- land in the row of the state it is given (returned: "sku#returned", or sellable: the sku's
-- own row) as a change that happened now, by the rules of a DELTA (apply_events.lua): logged
-- in the change log, so a count taken before now keeps it and one taken at or after now
-- (which saw the units) includes it; a sellable row counted at or after now, or covered by
-- a later full count, is left as it is. The same return id again: the same answer, nothing
-- changed; with another fingerprint: CONFLICT.
-- KEYS[1] {L}:n:<return id>  "fingerprint\n" then the lines "sku\tqty\tstate\n"...
--   KEYS[2] {L}:f  the latest full count's time;  KEYS[3..] {L}:s:<b> stock buckets and
--   {L}:d:<b> change logs
-- ARGV: return_id, fingerprint, now_ms, retention_ms, n, then n groups of 6: sku, row (the
--   sku, or "sku#returned"), qty, state, stock idx, log idx; then the change channel
-- Returns {'RECORDED', lines} | {'SAME', lines} | {'CONFLICT', ''}
local rid, fp, now, retention = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local had = redis.call('GET', KEYS[1])
if had then
  local was, lines = string.match(had, '^([^\n]*)\n(.*)$')
  if was == fp then return {'SAME', lines} end
  return {'CONFLICT', ''}
end
local full = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = {}
for j = 0, n - 1 do
  local p = 6 + j * 6
  local sku, row, q, state = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2]), ARGV[p + 3]
  local key, log = KEYS[tonumber(ARGV[p + 4])], KEYS[tonumber(ARGV[p + 5])]
  local r = read_row(key, row)
  local mark = full
  if string.find(row, '#', 1, true) then mark = 0 end  -- a full count's mark: sellable rows
  if now > r[5] and now > mark then
    r[1] = r[1] + q
    write_row(key, row, r)
    redis.call('ZADD', log, now, row .. '\tn:' .. rid .. '\t' .. q)  -- n: returns
  end
  out[#out + 1] = sku .. '\t' .. q .. '\t' .. state .. '\n'
end
local lines = table.concat(out)
redis.call('SET', KEYS[1], fp .. '\n' .. lines, 'PX', retention)
return {'RECORDED', lines}
