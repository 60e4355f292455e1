-- read_rows: many stock rows of one or more locations in one call (a read: changes nothing).
-- KEYS[1..] {L}:s:<b> stock buckets
-- ARGV: pairs (stock key index, sku)
-- Returns the raw row value of each pair, in order (false where the row does not exist)
local out = {}
for i = 1, #ARGV, 2 do
  out[#out + 1] = redis.call('HGET', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
end
return out
