-- move_in: a MoveLine's step at the destination L, named by its attempt's token: 'hold' the
-- moved line at L, or 'undo' that hold (the move is rolled back).
-- KEYS[1] {L}:r:<id> the reservation's part at L;  KEYS[2] {L}:x the expiry index;
-- KEYS[3] {L}:h units held per row and channel;  KEYS[4] {L}:p the rows' pools;
-- KEYS[5] {L}:c pick capacity;  KEYS[6] {L}:s:<b> the sku's stock bucket;
-- KEYS[7] {L}:d:<b> its change log
-- ARGV: id, token, mode, the reservation's fingerprint, now_ms, expires_at_ms, retention_ms,
--   sku, qty, join ('1': the reservation has a part at L already, the line joins it;
--   '0': a new part, in place of any part not HELD), the reservation's sales channel ('' for
--   none), its buffer and its most share in millionths at L (as hold.lua), the pick capacity
--   limit (-1: none taken), day, keep_from (as hold.lua; a new part only), then L's change
--   channel (write_row)
-- hold: as hold.lua would hold the line (I3, and the channel's rules: channel_available),
--   with the reservation's expiry; the part records the attempt ('mi': token, sku, qty).
--   Returns {'HELD', the part's expiry} (also when this attempt held before)
--   | {'SHORT', sku, requested, available} | {'FULL', orders picked that day}
--   | {'STATE', state} | {'MISSING'} | {'CANCELLED'} (the attempt was rolled back here)
-- undo: takes back what the attempt held (take_off), if it held; either way the token joins
--   the part's rolled back ones ('mx'), so that a hold still on its way never lands (where
--   there is no part, a RELEASED one is left to say so).
--   Returns {'UNDONE', 1 if it took a hold back else 0}
local id, token, mode, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, exp, retention = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local sku, qty, join = ARGV[8], tonumber(ARGV[9]), ARGV[10] == '1'
local ch, buffer, share = ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13])
local limit, day, keep_from = tonumber(ARGV[14]), ARGV[15], ARGV[16]
local rec = KEYS[1]
local cur = redis.call('HMGET', rec, 's', 'x', 'l', 'mi', 'mx')
local mine = cur[4] and string.sub(cur[4], 1, #token) == token

if mode == 'undo' then
  if has_token(cur[5], token) then return {'UNDONE', 0} end
  add_token(rec, 'mx', cur[5], token)
  if not cur[1] then
    redis.call('HSET', rec, 's', 'RELEASED', 'f', fp, 'l', '')
    redis.call('PEXPIRE', rec, retention)
  end
  if not mine then return {'UNDONE', 0} end
  redis.call('HDEL', rec, 'mi')
  if cur[1] ~= 'HELD' then return {'UNDONE', 0} end -- it expired meanwhile: its units are back
  local _, s, q = string.match(cur[4], '^([^\t]+)\t([^\t]+)\t(%d+)$')
  take_off(rec, KEYS[2], KEYS[5], KEYS[3], id, s, tonumber(q), KEYS[6], KEYS[7], retention)
  return {'UNDONE', 1}
end

if has_token(cur[5], token) then return {'CANCELLED'} end
if mine then return {'HELD', tonumber(cur[2])} end
if exp <= now then return {'STATE', 'EXPIRED'} end
if join then
  local refused = part_gate(cur[1], cur[2], false, now)
  if refused then return refused end
elseif cur[1] == 'HELD' or cur[1] == 'COMMITTED' then
  return {'STATE', cur[1]}
end
local r = read_row(KEYS[6], sku)
local a = available(r)
if ch ~= '' then a = channel_available(r, KEYS[3], KEYS[4], sku, ch, buffer, share) end
if a < qty then return {'SHORT', sku, qty, a} end
if not join and limit >= 0 then
  local used = tonumber(redis.call('HGET', KEYS[5], day) or '0')
  if used >= limit then return {'FULL', used} end
end

r[2] = r[2] + qty
write_row(KEYS[6], sku, r, hold_channel(KEYS[3], sku, ch, qty))
if join then
  local lines, found = {}, false
  for _, ln in ipairs(parse_lines(cur[3])) do
    if ln[1] == sku then ln[2], found = ln[2] + qty, true end
    lines[#lines + 1] = string.format('%s\t%d\n', ln[1], ln[2])
  end
  if not found then lines[#lines + 1] = string.format('%s\t%d\n', sku, qty) end
  redis.call('HSET', rec, 'l', table.concat(lines))
  exp = tonumber(cur[2])
else
  -- a new part, in place of any RELEASED by an earlier move: the tokens of that part's
  -- moves ('mo', 'mx') stay, so that a late step of one of them finds them
  redis.call('HDEL', rec, 'e', 'c', 'ch')
  redis.call('HSET', rec, 's', 'HELD', 'x', exp, 'f', fp, 'l', string.format('%s\t%d\n', sku, qty), 't', now)
  redis.call('PERSIST', rec)
  if ch ~= '' then redis.call('HSET', rec, 'ch', ch) end
  if limit >= 0 then
    take_capacity(KEYS[5], day, keep_from)
    redis.call('HSET', rec, 'c', day)
  end
  redis.call('ZADD', KEYS[2], exp, id)
end
redis.call('HSET', rec, 'mi', token .. '\t' .. sku .. '\t' .. qty)
return {'HELD', exp}
