-- move_out: a MoveLine's step at the source L, named by its attempt's token: take the moved
-- line 'out' of the reservation's part there (the step that decides the move: it is made
-- once the destination holds the line), or 'cancel' the attempt there (recovery: the move
-- is made if its line is out already, else it can no longer be).
-- KEYS[1] {L}:r:<id> the reservation's part at L;  KEYS[2] {L}:x the expiry index;
-- KEYS[3] {L}:c pick capacity;  KEYS[4] {L}:h units held per row and channel;
-- KEYS[5] {L}:s:<b> the sku's stock bucket;  KEYS[6] {L}:d:<b> its change log
-- ARGV: id, token, mode, now_ms, retention_ms, sku, qty, then L's change channel (write_row)
-- out: the part must be HELD, not past its expiry, and hold qty of sku; the line leaves it
--   (take_off: its other lines stay; a part left with none is RELEASED), and the part
--   records the token ('mo'). Returns {'DONE'} (also when this attempt did it before)
--   | {'CANCELLED'} (the attempt was cancelled here) | {'STATE', state} | {'MISSING'}
--   | {'MOVED'} (the part does not hold that line)
-- cancel: Returns {'DONE'} when the attempt took the line out, else {'CANCELLED'}, and the
--   token joins the part's rolled back ones ('mx'), so that the attempt's 'out' never lands.
local id, token, mode, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local retention, sku, qty = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local rec = KEYS[1]
local cur = redis.call('HMGET', rec, 's', 'x', 'l', 'mo', 'mx')
if has_token(cur[4], token) then return {'DONE'} end
if mode == 'cancel' then
  if cur[1] and not has_token(cur[5], token) then add_token(rec, 'mx', cur[5], token) end
  return {'CANCELLED'}
end
if has_token(cur[5], token) then return {'CANCELLED'} end
local refused = part_gate(cur[1], cur[2], false, now)
if refused then return refused end
local holds = false
for _, ln in ipairs(parse_lines(cur[3])) do
  if ln[1] == sku and ln[2] == qty then holds = true end
end
if not holds then return {'MOVED'} end
take_off(rec, KEYS[2], KEYS[3], KEYS[4], id, sku, qty, KEYS[5], KEYS[6], retention)
add_token(rec, 'mo', cur[4], token)
return {'DONE'}
