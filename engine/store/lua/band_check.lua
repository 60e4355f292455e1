-- band_check: the stock band of rows at one location, for each sales channel checked, against
-- the band last found of each ({L}:b:<b>). A change down (IN_STOCK -> LOW -> OUT) is a
-- crossing, put in L's outbox until the alerts stream has it (band_publish.lua); a change up
-- is only noted; a row and channel checked for the first time is only noted too (what it
-- was before is not known). Rows are read as they are now, so a crossing is found once,
-- however many check the same rows at once.
-- KEYS[1] {L}:bq  the outbox: crossings not yet known to be on the alerts stream, oldest first,
--   "n\tsku\tchannel\twas\tstatus\tavailable\tversion\tat_ms"
-- KEYS[2] {L}:bn  the number n of L's last crossing: each is numbered above the one before,
--   and above now_ms x 1000 (should this key be lost, n still grows)
-- KEYS[3] {L}:h, KEYS[4] {L}:p  (channel_available)
-- KEYS[5..] {L}:s:<b> stock buckets, {L}:b:<b> band buckets: sku -> "<band><channel>\n" per
--   channel (band I, L or O)
-- ARGV: now_ms, acked (the crossings numbered up to it are on the stream: dropped from the
--   outbox), c, then c triples (channel ('': none, what a row has available), its buffer, its share
--   in millionths at L), n, then n rows: sku, stock key index, band key index, then c pairs
--   (low, out) of its band for each channel
-- Returns how many crossings at L the outbox holds after the check (not yet acknowledged)
local now_ms, acked, c = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local outbox, numbers = KEYS[1], KEYS[2]
local channels = {}
for i = 0, c - 1 do
  local p = 4 + i * 3
  channels[i + 1] = {ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])}
end
local n, p = tonumber(ARGV[4 + c * 3]), 5 + c * 3
local RANK, NAME = {I = 0, L = 1, O = 2}, {I = 'IN_STOCK', L = 'LOW', O = 'OUT'}

local function int(x) return string.format('%d', x) end

while true do
  local head = redis.call('LINDEX', outbox, 0)
  if not head or tonumber(string.match(head, '^(%d+)')) > acked then break end
  redis.call('LPOP', outbox)
end

local first = tonumber(redis.call('GET', numbers) or '0')
local last = first

local function band(a, low, out)
  if a <= out then return 'O' end
  if a <= low then return 'L' end
  return 'I'
end

local function cross(sku, ch, was, now, a, version)
  last = math.max(last + 1, now_ms * 1000)
  local fields = {int(last), sku, ch, NAME[was], NAME[now], int(a), int(version), int(now_ms)}
  redis.call('RPUSH', outbox, table.concat(fields, '\t'))
end

for _ = 1, n do
  local sku, stock, bands = ARGV[p], KEYS[tonumber(ARGV[p + 1])], KEYS[tonumber(ARGV[p + 2])]
  local r = read_row(stock, sku)
  local found = {}
  for b, ch in string.gmatch(redis.call('HGET', bands, sku) or '', '([ILO])([^\n]*)\n') do
    found[ch] = b
  end
  local text, changed = {}, false
  for i, chan in ipairs(channels) do
    local ch, a = chan[1], nil
    if ch == '' then
      a = available(r)
    else
      a = channel_available(r, KEYS[3], KEYS[4], sku, ch, chan[2], chan[3])
    end
    local q = p + 3 + (i - 1) * 2
    local now, was = band(a, tonumber(ARGV[q]), tonumber(ARGV[q + 1])), found[ch]
    if now ~= was then
      changed = true
      if was and RANK[now] > RANK[was] then cross(sku, ch, was, now, a, r[4]) end
    end
    text[i] = now .. ch .. '\n'
  end
  if changed then redis.call('HSET', bands, sku, table.concat(text)) end
  p = p + 3 + c * 2
end
if last > first then redis.call('SET', numbers, int(last)) end
return redis.call('LLEN', outbox)
