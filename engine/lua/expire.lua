-- expire: the sweeper's step at one location: every listed part that is still HELD and
-- whose expiry has passed gives its units back and becomes EXPIRED (I7).
-- KEYS[1] {L}:x;  KEYS[2..m+1] {L}:r:<id> for the m ids;  KEYS[m+2..] {L}:s:<b> stock buckets
-- ARGV: now_ms, retention_ms, m, then m ids, then n, then n triples (sku, stock key index, 0)
-- Returns {expired count, id, expiry of the earliest hold still at L ('' and -1: none)};
--   the sweeper schedules that one, so whatever the due index lost, every hold is reached.
local now, retention, m = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4 + m])
local keys = key_map(ARGV, 5 + m, n)
local expired = 0
for i = 1, m do
  local id, rec = ARGV[3 + i], KEYS[1 + i]
  local cur = redis.call('HMGET', rec, 's', 'x')
  if cur[1] == 'HELD' and tonumber(cur[2]) <= now then
    unhold(rec, KEYS[1], id, 'EXPIRED', keys, retention)
    expired = expired + 1
  elseif cur[1] ~= 'HELD' then
    redis.call('ZREM', KEYS[1], id)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {expired, '', -1} end
return {expired, nxt[1], tonumber(nxt[2])}
