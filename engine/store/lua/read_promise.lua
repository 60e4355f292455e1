-- read_promise: the rows of some skus at one location, their supply and their future holds,
-- read at one instant (a read: changes nothing), for GetPromise.
-- KEYS[1] {L}:u supply by sku; KEYS[2] {L}:uf future holds by sku; KEYS[3..] {L}:s:<b> stock
-- buckets
-- ARGV: pairs (sku, stock key index)
-- Returns per sku, in order: its row value, its supply text, its future holds text (each
-- false: none)
local out = {}
for i = 1, #ARGV, 2 do
  out[#out + 1] = redis.call('HGET', KEYS[tonumber(ARGV[i + 1])], ARGV[i])
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i])
end
return out
