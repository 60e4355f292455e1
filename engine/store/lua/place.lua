-- place: on a Redis Cluster, the directory entry of a reservation at one location, sent at
-- the same moment as its hold (to the id's node; the hold goes to the location's), so that
-- such a Reserve is one round trip there too. Every attempt with the reservation's lines
-- counts itself in (field k); one whose hold failed counts itself out (unplace.lua), and the
-- last one out removes the entry: it stays exactly while some attempt may have held.
-- KEYS[1] res:{<id>}
-- ARGV: fingerprint, lines ("location\tsku\tqty\n"...), ttl_ms, the principal making it
-- Returns {'NEW'} (this attempt counted) | {'CONFLICT'} | {'SAGA', saga field} (an entry of
--         a saga: the caller takes the saga's way) | {'MOVED'} (a MoveLine moved, or is
--         moving, its lines: it holds nothing anew, and a part the hold made now is let go)
local got = read_dir(KEYS[1], ARGV[1])
if got == 'CONFLICT' then return {'CONFLICT'} end
if got and was_moved(KEYS[1], got) then return {'MOVED'} end
if got and got ~= '' then return {'SAGA', got} end
if got then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]), 'GT')
else
  write_dir(KEYS[1], ARGV[1], ARGV[2], '', tonumber(ARGV[3]), ARGV[4])
end
redis.call('HINCRBY', KEYS[1], 'k', 1)
return {'NEW'}
