-- read_offers: what a sales channel's share of rows at one location depends on, for the
-- reader to work out (engine/domain/rules.py: channel_offer, the formula of
-- channel_available in _prelude.lua): each row, its pools and what each pool's channel
-- holds of it, and what the asking channel does where its rule caps its share. Reads only.
-- KEYS[1] {L}:h units held per row and channel;  KEYS[2] {L}:p the rows' pools;
--   KEYS[3..] {L}:s:<b> stock buckets
-- ARGV: channel, capped ('1': its rule caps its share), n, then n pairs (sku, stock key index)
-- Returns, a row, {the row as stored ('' for none), its note (pools_note, then with capped
--   "\nh\t<channel>\t<units>" of the asking channel)}
local ch, capped, n = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local pooled = redis.call('EXISTS', KEYS[2]) == 1
local out = {}
for j = 0, n - 1 do
  local sku, k = ARGV[4 + j * 2], tonumber(ARGV[5 + j * 2])
  out[#out + 1] = redis.call('HGET', KEYS[k], sku) or ''
  local note = '\nP'
  if pooled then note = pools_note(KEYS[2], KEYS[1], sku) end
  if capped then
    note = note .. '\nh\t' .. ch .. '\t' .. (redis.call('HGET', KEYS[1], sku .. '\t' .. ch) or '0')
  end
  out[#out + 1] = note
end
return out
