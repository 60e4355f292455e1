-- extend: move a HELD part's expiry; a part already past its expiry cannot be revived.
-- KEYS[1] {L}:r:<id>;  KEYS[2] {omnistock}:due;  KEYS[3] res:{<id>} the directory (its lifetime follows)
-- ARGV: due member, now_ms, expires_at_ms, retention_ms, mode ('set' | 'pin': pin never shortens)
-- Returns {'HELD', expires_at} | {'STATE', state} | {'MISSING'}
local member, now, exp, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = redis.call('HMGET', KEYS[1], 's', 'x')
if not cur[1] then return {'MISSING'} end
if cur[1] ~= 'HELD' then return {'STATE', cur[1]} end
if tonumber(cur[2]) <= now then return {'STATE', 'EXPIRED'} end
if ARGV[5] == 'pin' and tonumber(cur[2]) > exp then exp = tonumber(cur[2]) end
redis.call('HSET', KEYS[1], 'x', exp)
redis.call('ZADD', KEYS[2], exp, member)
if redis.call('PTTL', KEYS[3]) < exp - now + retention then
  redis.call('PEXPIRE', KEYS[3], exp - now + retention)
end
return {'HELD', exp}
