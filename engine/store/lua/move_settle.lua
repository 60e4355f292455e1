-- move_settle: end a MoveLine in the directory, only while its saga field is still
-- MOVING:<token> (a late or repeated step changes nothing). Made: the reservation's lines
-- become the moved ones, the lines' generation (n) moves on, and the move id is kept with
-- the move it made (d:<move id>), for its retries. Not made: the lines stay. Either way the
-- saga field is settled ('') and the record (m) goes.
-- KEYS[1] res:{<id>}
-- ARGV: token, the lines after the move ("location\tsku\tqty\n"...; '' when not made)
-- Returns 1 when settled, 0 when the saga field was something else
local cur = redis.call('HMGET', KEYS[1], 'g', 'm')
if cur[1] ~= 'MOVING:' .. ARGV[1] then return 0 end
if ARGV[2] ~= '' then
  local move_id, move = string.match(cur[2], '^([^\t]+)\t(.*)$')
  redis.call('HSET', KEYS[1], 'l', ARGV[2], 'd:' .. move_id, move)
  redis.call('HINCRBY', KEYS[1], 'n', 1)
end
redis.call('HDEL', KEYS[1], 'm')
redis.call('HSET', KEYS[1], 'g', '')
return 1
