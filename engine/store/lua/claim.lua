-- claim: open a cross-location reservation in its directory before any part is held.
-- KEYS[1] res:{<id>}
-- ARGV: fingerprint, lines ("location\tsku\tqty\n"...), saga owner token, ttl_ms,
--       the principal that makes it (the directory's owner)
-- Returns {'NEW'} | {'CONFLICT'} | {'SAGA', saga field}  ('' once the saga has settled)
local got = read_dir(KEYS[1], ARGV[1])
if got == 'CONFLICT' then return {'CONFLICT'} end
if got then return {'SAGA', got} end
write_dir(KEYS[1], ARGV[1], ARGV[2], 'PENDING:' .. ARGV[3], tonumber(ARGV[4]), ARGV[5])
return {'NEW'}
