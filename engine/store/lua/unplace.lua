-- unplace: an attempt placed by place.lua whose hold failed (SHORT, FULL) counts itself out;
-- the entry goes when no attempt that may have held is left in it.
-- KEYS[1] res:{<id>}
-- ARGV: fingerprint
-- Returns 1 when the entry was removed, else 0
local cur = redis.call('HMGET', KEYS[1], 'f', 'g')
if cur[1] ~= ARGV[1] or (cur[2] and cur[2] ~= '') then return 0 end
if redis.call('HINCRBY', KEYS[1], 'k', -1) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
