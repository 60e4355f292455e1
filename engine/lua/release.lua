-- release: give a HELD reservation part's units back (reserved drops by each qty).
-- KEYS[1]  {L}:r:<id>;  KEYS[2] {omnistock}:due;  KEYS[3..] {L}:s:<b> stock buckets
-- ARGV: due member, now_ms, retention_ms, tombstone, n, then n triples (sku, stock key index, 0)
--   tombstone == '1' leaves a RELEASED part where none exists, so that a hold still on its
--   way from a crashed saga can never land after the rollback.
-- Returns {'RELEASED', 1 if this call released a hold else 0} | {'STATE', state} | {'MISSING'}
local member, retention = ARGV[1], tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[1], 's')
if not state then
  if ARGV[4] == '1' then
    redis.call('HSET', KEYS[1], 's', 'RELEASED', 'f', '', 'l', '')
    redis.call('PEXPIRE', KEYS[1], retention)
    return {'RELEASED', 0}
  end
  return {'MISSING'}
end
if state == 'RELEASED' then return {'RELEASED', 0} end
if state ~= 'HELD' then return {'STATE', state} end
unhold(KEYS[1], KEYS[2], member, 'RELEASED', key_map(ARGV, 6, tonumber(ARGV[5])), retention)
return {'RELEASED', 1}
