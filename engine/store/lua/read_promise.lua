-- read_promise: the rows of some skus at one location, their supply and what their future
-- holds promise, read at one instant (a read: changes nothing), for GetPromise.
-- KEYS[1] {L}:u supply by sku; KEYS[2..] {L}:s:<b> stock buckets and {L}:uf:<sku> the rows'
-- future holds
-- ARGV: triples (sku, stock key index, future holds key index)
-- Returns per sku, in order: its row value, its supply text, its future holds' span totals
-- ("date\tunits\n"...: _prelude.lua), each false when none
local out = {}
for i = 1, #ARGV, 3 do
  out[#out + 1] = redis.call('HGET', KEYS[tonumber(ARGV[i + 1])], ARGV[i])
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
  out[#out + 1] = redis.call('HGET', KEYS[tonumber(ARGV[i + 2])], '=')
end
return out
