-- settle: move a reservation's saga field in its directory, only from the expected value,
-- so that a late or concurrent step can never overwrite a newer decision.
-- KEYS[1] res:{<id>}
-- ARGV: expected saga field, new saga field ('' = settled), ttl_ms (0: keep)
-- Returns 1 when moved, 0 when the field was something else (or the directory is gone)
local cur = redis.call('HGET', KEYS[1], 'g')
if cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3])) end
return 1
