-- disarm: take locations off the sweep's wake-up index, each only if its wake-up time is
-- still the one the sweeper read: a hold that lowered it meanwhile keeps its wake-up.
-- KEYS[1] {omnistock:w<k>}:wake, the wake-up shard of the locations in ARGV
-- ARGV: pairs (location, wake-up time as read)
-- Returns the number of locations taken off
local n = 0
for i = 1, #ARGV, 2 do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if cur and tonumber(cur) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
