-- budget: count a hold against caps on units, on several ledgers at once, all or none.
-- A ledger is a hash: reservation id -> "units,expires_at_ms"; its units count until then:
--   principal:{<name>}:held   a storefront's units held at once (its cap on held units)
--   customer:{<id>}:<sku>     a customer's units of a limited sku, held (until the hold's
--                             expiry) and bought (until the commit's time + the window)
-- KEYS[1..n] the ledgers (one slot: one principal's, or one customer's)
-- ARGV: now_ms, reservation id, n, then n triples (units, expires_at_ms, cap)
-- Returns {'OK'} | {'OVER', i, the units KEYS[i] counts now}
-- Entries past their expiry are dropped as they are met; a release drops its own (HDEL).
-- An id already counted in a ledger (a retried Reserve, an Extend, a Commit) keeps its
-- units, uncapped, with its new expiry. Each ledger expires with its last entry (by the
-- caller's clock: PEXPIRE, not PEXPIREAT).
local now, id, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local counted, lasts = {}, {}
for i = 1, n do
  local units, exp, cap = tonumber(ARGV[1 + i * 3]), tonumber(ARGV[2 + i * 3]), tonumber(ARGV[3 + i * 3])
  local held, last, known = 0, exp, false
  local all = redis.call('HGETALL', KEYS[i])
  for j = 1, #all, 2 do
    local u, x = string.match(all[j + 1], '^(%d+),(%d+)$')
    u, x = tonumber(u), tonumber(x)
    if all[j] == id then
      known, units = true, u
    elseif x <= now then
      redis.call('HDEL', KEYS[i], all[j])
    else
      held = held + u
      if x > last then last = x end
    end
  end
  if not known and held + units > cap then return {'OVER', i, held} end
  counted[i], lasts[i] = units, last
end
for i = 1, n do
  redis.call('HSET', KEYS[i], id, string.format('%d,%d', counted[i], tonumber(ARGV[2 + i * 3])))
  redis.call('PEXPIRE', KEYS[i], math.max(1, lasts[i] - now))
end
return {'OK'}
