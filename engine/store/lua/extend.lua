-- extend: move a HELD part's expiry; a part already past its expiry cannot be revived, and
-- one with units waiting for supply (field fl: hold.lua) is never shortened (it is held
-- until its promise date and a ttl).
-- (Once it answers HELD, the caller moves L's wake-up and keeps the directory alive as long.)
-- KEYS[1] {L}:r:<id>;  KEYS[2] {L}:x the expiry index
-- ARGV: id, now_ms, expires_at_ms, mode ('set' | 'pin': pin never shortens)
-- Returns {'HELD', expires_at, fl ('' when nothing waits)} | {'STATE', state} | {'MISSING'}
local id, now, exp = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 's', 'x', 'fl')
local refused = part_gate(cur[1], cur[2], false, now)
if refused then return refused end
if (ARGV[4] == 'pin' or cur[3]) and tonumber(cur[2]) > exp then exp = tonumber(cur[2]) end
redis.call('HSET', KEYS[1], 'x', exp)
redis.call('ZADD', KEYS[2], exp, id)
return {'HELD', exp, cur[3] or ''}
