-- release: give a HELD reservation part's units back (reserved drops by each qty).
-- KEYS[1]  {L}:r:<id>;  KEYS[2] {L}:x the expiry index;  KEYS[3] {L}:c pick capacity;
-- KEYS[4] {L}:h units held per row and channel;  KEYS[5..] {L}:s:<b> stock buckets and
-- {L}:d:<b> change logs
-- ARGV: id, retention_ms, mode, fingerprint ('' for any part), lines ('' for any, else the
--   part's lines as the caller read them: a part with others answers MOVED, as in
--   commit.lua), n, then n triples (sku, stock key index, log key index), then the
--   location's change channel (write_row)
--   mode 'release':   the part becomes RELEASED, and is remembered for the retention.
--   mode 'tombstone': also leaves a RELEASED part where none exists, so that a hold still on
--                     its way from a crashed saga can never land after its rollback.
--   mode 'forget':    the part never took effect (its saga fell short, or the id turned
--                     out to be taken): give the units (and pick capacity) back and delete
--                     it, so that the id can be reserved again. With a fingerprint, only a
--                     part of those lines is let go (another one answers MISSING).
-- Returns {'RELEASED', 1 if this call released a hold else 0} | {'STATE', state} | {'MISSING'}
--       | {'MOVED'}
local id, retention, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local cur = redis.call('HMGET', KEYS[1], 's', 'f', 'l')
local state = cur[1]
if ARGV[4] ~= '' and cur[2] ~= ARGV[4] then return {'MISSING'} end
if ARGV[5] ~= '' and state and not same_lines(cur[3], ARGV[5]) then return {'MOVED'} end
if not state then
  if mode == 'tombstone' then
    redis.call('HSET', KEYS[1], 's', 'RELEASED', 'f', '', 'l', '')
    redis.call('PEXPIRE', KEYS[1], retention)
    return {'RELEASED', 0}
  end
  return {'MISSING'}
end
local refused = part_gate(state, nil, 'RELEASED', nil)
if refused then return refused end
unhold(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id, 'RELEASED', key_map(ARGV, 7, tonumber(ARGV[6])), retention)
if mode == 'forget' then redis.call('DEL', KEYS[1]) end
return {'RELEASED', 1}
