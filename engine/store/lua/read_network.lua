-- read_network: what a sales channel may hold of many rows at one or more locations (the
-- members of a network), each as its hold would find it (channel_available in
-- _prelude.lua); with no channel, each row's available units. Reads only.
-- KEYS: per location, with a channel, its {L}:h (units held per row and channel) and {L}:p
--   (the rows' pools); and the stock buckets {L}:s:<b> its rows are in. On a Redis Cluster
--   every key of one call is of one location (one slot).
-- ARGV: channel ('' for none), m (locations), then per location: held key index, pools key
--   index (0 and 0 without a channel), buffer, share (millionths), n, then n pairs (sku,
--   stock key index)
-- Returns each row's figure, location by location, in the order given
local ch, m = ARGV[1], tonumber(ARGV[2])
local out, p = {}, 3
for _ = 1, m do
  local held, pools = KEYS[tonumber(ARGV[p])], KEYS[tonumber(ARGV[p + 1])]
  local buffer, share, n = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
  p = p + 5
  for j = 0, n - 1 do
    local sku = ARGV[p + j * 2]
    local r = read_row(KEYS[tonumber(ARGV[p + 1 + j * 2])], sku)
    if ch == '' then
      out[#out + 1] = available(r)
    else
      out[#out + 1] = channel_available(r, held, pools, sku, ch, buffer, share)
    end
  end
  p = p + n * 2
end
return out
