-- settle: move a reservation's saga field in its directory, only from the expected value,
-- so that a late or concurrent step can never overwrite a newer decision.
-- KEYS[1] res:{<id>}
-- ARGV: expected saga field, new saga field ('' = settled), ttl_ms (0: keep), and the
--   lines' generation expected (field n, '0' before any MoveLine; '' for any): a commit or
--   release decided on lines a MoveLine has changed since is refused
-- Returns 1 when moved, 0 when the field was something else (or the directory is gone)
local cur = redis.call('HMGET', KEYS[1], 'g', 'n')
if cur[1] ~= ARGV[1] then return 0 end
if ARGV[4] ~= '' and (cur[2] or '0') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3])) end
return 1
