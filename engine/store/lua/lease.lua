-- lease: takes, keeps or lets go of a lease held by one process at a time (the band
-- crossings' detector and its standby: engine/usecases/bandalerts.py).
-- KEYS[1] the lease: the holder's token, with an expiry
-- ARGV: holder (the process's token), ttl_ms (0: let it go, if this holder has it)
-- Returns 1 when the holder has it now (taken, or kept for ttl_ms more), else 0
local holder, ttl = ARGV[1], tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[1])
if ttl == 0 then
  if cur == holder then redis.call('DEL', KEYS[1]) end
  return 0
end
if cur and cur ~= holder then return 0 end
redis.call('SET', KEYS[1], holder, 'PX', ttl)
return 1
