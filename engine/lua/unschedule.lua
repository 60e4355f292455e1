-- unschedule: drop entries from the sweeper's due index, each only if its score is still the
-- one the sweeper read: an extend that moved it meanwhile must stay scheduled.
-- KEYS[1] {omnistock}:due  (member "<location>\t<id>", score = expiry ms)
-- ARGV: pairs (member, score)
-- Returns the number removed
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
