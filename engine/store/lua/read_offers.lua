-- read_offers: what a sales channel's share of rows at one location depends on, for the
-- reader to work out (engine/domain/rules.py: channel_offer, the formula of
-- channel_available in _prelude.lua): each row, its pools and what each pool's channel and
-- the asking one hold of it. Reads only.
-- KEYS[1] {L}:h units held per row and channel;  KEYS[2] {L}:p the rows' pools;
--   KEYS[3..] {L}:s:<b> stock buckets
-- ARGV: channel, n, then n pairs (sku, stock key index)
-- Returns, a row, {the row as stored ('' for none), its note (pools_note, then "\nh\t<channel>
--   \t<units>" of the asking channel)}
local ch, n = ARGV[1], tonumber(ARGV[2])
local out = {}
for j = 0, n - 1 do
  local sku, k = ARGV[3 + j * 2], tonumber(ARGV[4 + j * 2])
  out[#out + 1] = redis.call('HGET', KEYS[k], sku) or ''
  local held = redis.call('HGET', KEYS[1], sku .. '\t' .. ch) or '0'
  out[#out + 1] = pools_note(KEYS[2], KEYS[1], sku) .. '\nh\t' .. ch .. '\t' .. held
end
return out
