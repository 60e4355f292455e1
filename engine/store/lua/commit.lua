-- commit: turn a HELD reservation part into a sale: on_hand and reserved drop by each qty.
-- The commit is logged at now_ms so that a later store count taken before it keeps it (I5),
-- and the part is kept (retention) so the store's echo of the sale is recognised (I6).
-- KEYS[1]  {L}:r:<id>;  KEYS[2] {L}:x the expiry index;  KEYS[3] {L}:h units held per row and
-- channel (the part's leave it);  KEYS[4..] {L}:s:<b> and {L}:d:<b> buckets
-- ARGV: id, now_ms, retention_ms, force, lines, n, then n triples (sku, stock key index,
--   log key index), then the location's change channel (write_row)
--   force == '1' commits a part even past its expiry: the commit was decided while every
--   part was pinned (a cross-location commit being finished after a crash).
--   lines: '' for any, else the part's lines as the caller read them ("sku\tqty\n"...): a
--   commit at one location makes no directory step, so a part whose lines a MoveLine has
--   changed since answers MOVED (see same_lines).
-- Returns {'COMMITTED', 1 if this call committed else 0} | {'STATE', state} | {'MISSING'}
--       | {'MOVED'} | {'PROMISED', sku} (a line still waits for supply, or its promise broke:
--       hold.lua; nothing is committed)
local id, now, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 's', 'x', 'l', 'ch', 'fl')
if ARGV[5] ~= '' and cur[1] and not same_lines(cur[3], ARGV[5]) then return {'MOVED'} end
local refused = part_gate(cur[1], cur[2], 'COMMITTED', ARGV[4] ~= '1' and now or nil)
if refused then return refused end
if cur[5] then return {'PROMISED', string.match(cur[5], '^[^\t]+')} end

local keys = key_map(ARGV, 7, tonumber(ARGV[6]))
local lines = parse_lines(cur[3])
for _, ln in ipairs(lines) do
  local k = keys[ln[1]]
  local r = read_row(KEYS[k[1]], ln[1])
  r[1] = r[1] - ln[2]
  r[2] = r[2] - ln[2]
  write_row(KEYS[k[1]], ln[1], r, hold_channel(KEYS[3], ln[1], cur[4], -ln[2]))
  redis.call('ZADD', KEYS[k[2]], now, ln[1] .. '\tc:' .. id .. '\t-' .. ln[2])
end
redis.call('HSET', KEYS[1], 's', 'COMMITTED')
redis.call('ZREM', KEYS[2], id)
redis.call('PEXPIRE', KEYS[1], retention)
return {'COMMITTED', 1}
