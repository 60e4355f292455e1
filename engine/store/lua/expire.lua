-- expire: the sweeper's step at one location: every listed part that is still HELD and
-- whose expiry has passed gives its units (and any pick capacity) back and becomes EXPIRED
-- (I7). Entries of parts no longer HELD leave the expiry index; a part HELD but not yet due
-- (another process's clock ran ahead) stays in it.
-- KEYS[1] {L}:x the expiry index;  KEYS[2] {L}:c pick capacity;  KEYS[3] {L}:h units held per
-- row and channel;  KEYS[4..m+3] {L}:r:<id> for the m parts;  KEYS[m+4..] stock buckets and
-- change logs
-- ARGV: now_ms, retention_ms, m, then m reservation ids, then n, then n triples (sku, stock key index, log key index),
--   then the location's change channel (write_row)
-- Returns the number of parts expired
local now, retention, m = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local keys = key_map(ARGV, 5 + m, tonumber(ARGV[4 + m]))
local expired = 0
for i = 1, m do
  local id, rec = ARGV[3 + i], KEYS[3 + i]
  local cur = redis.call('HMGET', rec, 's', 'x')
  if cur[1] == 'HELD' and tonumber(cur[2]) <= now then
    unhold(rec, KEYS[1], KEYS[2], KEYS[3], id, 'EXPIRED', keys, retention)
    expired = expired + 1
  elseif cur[1] ~= 'HELD' then
    redis.call('ZREM', KEYS[1], id)
  end
end
return expired
