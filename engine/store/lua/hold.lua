-- hold: hold every line of one reservation at one location, all or nothing (I2, I3, I4).
-- KEYS[1]  {L}:r:<id>   the reservation's part at this location (hash: s, x, f, l, t, ch)
-- KEYS[2]  {L}:x        the expiry index of L: reservation id -> expiry (ms), for the sweeper
-- KEYS[3]  {L}:h        units held per row and channel: "sku\tchannel" -> units
-- KEYS[4]  {L}:p        the rows' pools: sku -> "channel\tunits\tfallback\n"...
-- KEYS[5..] {L}:s:<b>   stock buckets the lines live in
-- KEYS[#KEYS-1] {omnistock:w<k>}:wake (L's wake-up shard), and KEYS[#KEYS] res:{<id>} the directory, only when
--           ARGV[6] == '1' (one Redis, one location: there the hold also sets L's wake-up;
--           elsewhere the caller sends that ZADD behind the script)
-- KEYS[cap] {L}:c        pick capacity, only when the hold takes one (a ship-from-store plan)
-- ARGV: reservation id, fingerprint, now_ms, expires_at_ms, retention_ms, with_dir, dir_lines, n,
--       then n quadruples (sku, qty, bucket key index, promise_ms: 0 for none),
--       then cap (index of {L}:c in KEYS, 0: takes no capacity), limit, day, keep_from
--       (a plan takes one of the `limit` orders L may pick on `day`; see take_capacity),
--       then L (the location id, for the wake-up), then the principal making it (the
--       directory's owner), then the sales channel ('' for none), its buffer and its most
--       share in millionths (1000000: no cap) at L, then the location's change channel
--       (write_row), after the index in KEYS of {L}:u (0: no line has a promise) and the
--       expiry of a part with units waiting for supply (the latest promise date and a ttl)
-- A line with a promise date that on hand cannot cover takes what is there on hand and the
--   rest as a future hold, if the supply due by that date covers it with every future hold
--   of the row (room, _prelude.lua); the part records it ('fl'), the row's holds
--   ({L}:uf:<sku>, named from the part's key: in its slot) too.
-- A channel's hold may take of a row what channel_available (_prelude.lua) says: its pool,
--   the units no pool keeps, less its buffer and within its share; the part records its
--   channel, and {L}:h counts its units.
-- Returns {'HELD', expires_at} | {'SHORT', sku, requested, available, ...}
--       | {'FULL', orders already picked that day} | {'EXISTS', state, expires_at} | {'CONFLICT'}
--       | {'MOVED'} (with the directory: the id's lines were moved by a MoveLine: see was_moved)
local id, fp = ARGV[1], ARGV[2]
local now, exp, retention = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[8])
local c = 9 + n * 4
local supply = tonumber(ARGV[c + 9])
local cap = tonumber(ARGV[c] or '0')
local ch, buffer, share = ARGV[c + 6], tonumber(ARGV[c + 7]), tonumber(ARGV[c + 8])

local dir = false
if ARGV[6] == '1' then
  dir = read_dir(KEYS[#KEYS], fp)
  if dir == 'CONFLICT' then return {'CONFLICT'} end
end

local cur = redis.call('HMGET', KEYS[1], 'f', 's', 'x')
if cur[1] then
  if cur[1] ~= fp then return {'CONFLICT'} end
  return {'EXISTS', cur[2], tonumber(cur[3])}
end
-- The id's part here is gone (forgotten after the retention), but its lines were moved
-- elsewhere since: it holds nothing anew.
if dir and was_moved(KEYS[#KEYS], dir) then return {'MOVED'} end

local short, rows, later = {}, {}, {}
for j = 0, n - 1 do
  local p = 9 + j * 4
  local sku, qty, k, by = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
  local r = read_row(KEYS[k], sku)
  local a = available(r)
  if ch ~= '' then a = channel_available(r, KEYS[3], KEYS[4], sku, ch, buffer, share) end
  local now_qty = qty
  if a < qty and by > 0 then
    local key, sp = future_key(KEYS[1], sku), spans(read_supply(KEYS[supply], sku))
    if qty - a <= room(sp, read_totals(key), by) then
      later[#later + 1] = {sku, qty - a, by, key, sp}
      now_qty = a
    end
  end
  if a < now_qty then
    short[#short + 1] = sku
    short[#short + 1] = qty
    short[#short + 1] = a
  end
  rows[j + 1] = {KEYS[k], sku, qty, r, now_qty}
end
if #short > 0 then
  table.insert(short, 1, 'SHORT')
  return short
end
if cap > 0 then
  local used = tonumber(redis.call('HGET', KEYS[cap], ARGV[c + 2]) or '0')
  if used >= tonumber(ARGV[c + 1]) then return {'FULL', used} end
end

if #later > 0 then exp = tonumber(ARGV[c + 10]) end
if ARGV[6] == '1' and not dir then write_dir(KEYS[#KEYS], fp, ARGV[7], '', exp - now + retention, ARGV[c + 5]) end
local lines = {}
for _, x in ipairs(rows) do
  x[4][2] = x[4][2] + x[5]
  write_row(x[1], x[2], x[4], hold_channel(KEYS[3], x[2], ch, x[5]))
  lines[#lines + 1] = x[2] .. '\t' .. x[3] .. '\n'
end
redis.call('HSET', KEYS[1], 's', 'HELD', 'x', exp, 'f', fp, 'l', table.concat(lines), 't', now)
if #later > 0 then
  local fl = {}
  for _, f in ipairs(later) do
    redis.call('HSET', f[4], id, string.format('%d\t%d\t%d', f[2], f[3], now))
    add_total(f[4], f[5], f[3], f[2])
    fl[f[1]] = {f[2], f[3]}
  end
  write_future_lines(KEYS[1], fl)
end
if ch ~= '' then redis.call('HSET', KEYS[1], 'ch', ch) end
if cap > 0 then
  take_capacity(KEYS[cap], ARGV[c + 2], ARGV[c + 3])
  redis.call('HSET', KEYS[1], 'c', ARGV[c + 2])
end
redis.call('ZADD', KEYS[2], exp, id)
if ARGV[6] == '1' then redis.call('ZADD', KEYS[#KEYS - 1], 'LT', exp, ARGV[c + 4]) end
return {'HELD', exp}
