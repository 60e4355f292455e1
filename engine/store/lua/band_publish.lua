-- band_publish: puts a location's band crossings (band_check.lua's outbox) on the alerts
-- stream, each once: KEYS[2] keeps, per location, the number of the last crossing put there,
-- and one numbered at or below it is skipped (sent again after a crash between the check
-- and this, or by two detectors at once).
-- KEYS[1] {omnistock}:alerts  the alerts stream;  KEYS[2] {omnistock}:bands:alerted  hash:
--   location -> the number of its last crossing on the stream
-- ARGV: location, kept (the stream is trimmed to about this many), then the crossings as
--   the outbox holds them ("n\tsku\tchannel\twas\tstatus\tavailable\tversion\tat_ms")
-- Returns {the number of L's last crossing on the stream, then the status of each put there
--   now}
local loc, kept = ARGV[1], ARGV[2]
local last = tonumber(redis.call('HGET', KEYS[2], loc) or '0')
local out = {''}
for i = 3, #ARGV do
  local n, sku, ch, was, status, a, v, at = string.match(
    ARGV[i], '^(%d+)\t([^\t]+)\t([^\t]*)\t([^\t]+)\t([^\t]+)\t(%d+)\t(%d+)\t(%d+)$')
  if tonumber(n) > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', kept, '*', 'kind', 'band', 'location_id', loc,
      'sku', sku, 'channel', ch, 'status', status, 'was', was, 'available', a, 'version', v,
      'at', at)
    last = tonumber(n)
    out[#out + 1] = status
  end
end
out[1] = string.format('%d', last)
redis.call('HSET', KEYS[2], loc, out[1])
return out
