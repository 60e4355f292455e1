-- move_claim: open a MoveLine in the reservation's directory, before any part is touched: the
-- saga field goes from '' to MOVING:<token> and field m records the move, so that commits,
-- releases, extends and other moves wait for it, and recovery can finish it after a crash
-- (engine/usecases/moves.py). Only from the lines the caller read: the lines' generation
-- (field n, moved on by every move that took effect) must still be the one it read.
-- KEYS[1] res:{<id>}
-- ARGV: the lines' generation as read ('0' before any move), move id, token,
--       the move ("location\tsku\tqty\tto", qty resolved)
-- Returns {'NEW'} | {'DONE', the move it made} (this move id moved a line before)
--       | {'SAGA', saga field} (another call's step is under way)
--       | {'STALE'} (a move changed the lines since they were read) | {'MISSING'}
local cur = redis.call('HMGET', KEYS[1], 'f', 'g', 'n', 'd:' .. ARGV[2])
if not cur[1] then return {'MISSING'} end
if cur[4] then return {'DONE', cur[4]} end
if cur[2] and cur[2] ~= '' then return {'SAGA', cur[2]} end
if (cur[3] or '0') ~= ARGV[1] then return {'STALE'} end
redis.call('HSET', KEYS[1], 'g', 'MOVING:' .. ARGV[3], 'm', ARGV[2] .. '\t' .. ARGV[4])
return {'NEW'}
