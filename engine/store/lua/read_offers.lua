-- read_offers: what one sales channel may hold of rows at one location, as a hold would
-- find it (channel_available in _prelude.lua: its rule, the rows' pools, what it and the
-- pools' channels hold). Reads only.
-- KEYS[1] {L}:h units held per row and channel;  KEYS[2] {L}:p the rows' pools;
--   KEYS[3..] {L}:s:<b> stock buckets
-- ARGV: channel, buffer, share (millionths), n, then n pairs (sku, stock key index)
-- Returns {what the channel may hold of each row}
local ch, buffer, share, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for j = 0, n - 1 do
  local sku, k = ARGV[5 + j * 2], tonumber(ARGV[6 + j * 2])
  out[j + 1] = channel_available(read_row(KEYS[k], sku), KEYS[1], KEYS[2], sku, ch, buffer, share)
end
return out
