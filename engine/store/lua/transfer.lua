-- transfer: a transfer's own record (transfer:{<id>}, a hash), created once and moved from
-- state to state; the stock steps at its two locations are supply.lua's.
-- KEYS[1] transfer:{<id>}: s state, f fingerprint, from, to, l lines ("sku\tqty\n"...),
--   x expected (ms), r what was received ("sku\tqty\n"...), b '1' once its units went back
-- ARGV[1] 'CREATE', then fingerprint and field/value pairs: the record, if there is none
--   -> {'NEW' | 'SAME' (one of that fingerprint) | 'CONFLICT', record as field/value pairs}
-- ARGV[1] 'MOVE', then the states it may move from (",A,B,"), its new state, and
--   field/value pairs set with it
--   -> {'MOVED' | 'STATE' (in none of those states: unchanged) | 'MISSING', record}
local key, op = KEYS[1], ARGV[1]
local cur = redis.call('HGET', key, 's')
if op == 'CREATE' then
  if cur then
    local same = redis.call('HGET', key, 'f') == ARGV[2]
    return {same and 'SAME' or 'CONFLICT', redis.call('HGETALL', key)}
  end
  redis.call('HSET', key, 'f', ARGV[2], unpack(ARGV, 3))
  return {'NEW', redis.call('HGETALL', key)}
end
if not cur then return {'MISSING', {}} end
if not string.find(ARGV[2], ',' .. cur .. ',', 1, true) then return {'STATE', redis.call('HGETALL', key)} end
redis.call('HSET', key, 's', ARGV[3], unpack(ARGV, 4))
return {'MOVED', redis.call('HGETALL', key)}
