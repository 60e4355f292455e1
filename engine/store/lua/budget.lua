-- budget: count a hold against its storefront principal's cap on units held at once.
-- KEYS[1] principal:{<name>}:held  hash: reservation id -> "units,expires_at_ms"
-- ARGV: now_ms, reservation id, units, expires_at_ms, cap
-- Returns {'OK'} | {'OVER', units the principal holds now}
-- Entries past their expiry are dropped as they are met; commits and releases drop theirs
-- (HDEL). An id already counted (a retried Reserve, an Extend) keeps its place, with its
-- new expiry. The key expires with its last entry.
local now, id, units = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local exp, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local held, last, known = 0, exp, false
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local u, x = string.match(all[i + 1], '^(%d+),(%d+)$')
  u, x = tonumber(u), tonumber(x)
  if all[i] == id then
    known, units = true, u
  elseif x <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    held = held + u
    if x > last then last = x end
  end
end
if not known and held + units > cap then return {'OVER', held} end
redis.call('HSET', KEYS[1], id, units .. ',' .. exp)
redis.call('PEXPIREAT', KEYS[1], last)
return {'OK'}
