-- supply: change a location's future supply and, for a transfer's step there, its stock, in
-- one step (UpsertSupply; the steps of ShipTransfer, ReceiveTransfer, CancelTransfer at one
-- end of a transfer: engine/usecases/transfers.py).
-- KEYS[1] {L}:u  supply by sku: sku -> "entry\tqty\texpected_ms\tkind\n"... (by expected, entry)
-- KEYS[2] {L}:ui supply by entry: entry -> "sku\tqty\texpected_ms\tkind", or "X\tsku" cancelled
-- KEYS[3] {L}:t  the transfer steps made at L: "<transfer id>\t<step>" -> when (ms)
-- KEYS[4..] {L}:s:<b> stock buckets and {L}:d:<b> change logs
-- ARGV: now_ms, max_per_row (open supplies of one sku), dry ('1': check only, write nothing), step ('' for none, else
--   "<transfer id>\t<step letter>"), log tag ("t:<transfer id>"), n, then n groups of 6:
--   entry ("p:<supply id>" or "t:<transfer id>|<sku>"), sku, qty, expected_ms, kind (P|A|T),
--   op (S set, X cancel: remembered as cancelled, D drop: forgotten, R received: its qty
--   units land on hand, sellable, logged at now, and it is remembered as received),
--   then m, then m groups of 4: sku, signed qty, stock idx, log idx; then k, then k triples:
--   sku, stock idx, log idx (the rows received into: R ops, and a receiving step's lines); last the location's change
--   channel (write_row)
-- A step already made at L answers {'DONE'} and changes nothing. Refusals change nothing:
--   {'REFUSED', i, 'SKU', its sku}  supply i is of another sku
--   {'REFUSED', i, 'CANCELLED', ''} supply i was cancelled: it is not received
--   {'REFUSED', i, 'FULL', ''}      supply i would be its row's max_per_row + 1st
--   {'SHORT', sku, available, ...}  a line takes more than its row's available units
-- Else {'OK', {per supply: CREATED | UPDATED | UNCHANGED | CANCELLED | DROPPED | RECEIVED}, converted,
-- broken}; the stock lines are applied and logged at now (as a commit is: a count taken
-- before keeps them, I5). Then each row whose supply changed or that was received into
-- settles its future holds (I9): in a row received into, its available units go to the
-- future holds, earliest promise first, each taking what it waits for or what is left
-- (converted: id, sku, qty taken on hand ...); of the units still waiting, those the supply
-- left no longer covers by their promise dates (cover) break: they leave {L}:uf:<sku> and their
-- part marks them (promise 0) (broken: id, sku, qty, promise_ms ...). The others stay, on
-- whatever supply now covers them (re-promised from later supply).
-- Numbers are kept as the strings given: '%d' and tostring would round or reformat them.
local now, most, dry, step, tag = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local m_at = 7 + n * 6
local m = tonumber(ARGV[m_at])
if step ~= '' and redis.call('HEXISTS', KEYS[3], step) == 1 then return {'DONE'} end
-- A cancel's steps fence off the ship's that may still be on their way (a racing ShipTransfer):
-- D (the transit supply dropped at `to`) counts I as made, so no transit supply comes after
-- it; B (the units back at `from`) brings them back only if S took them, and counts S as
-- made, so none leave after it.
local tid, letter = string.match(step, '^(.*)\t(%a)$')
if letter == 'B' and redis.call('HEXISTS', KEYS[3], tid .. '\tS') == 0 then m = 0 end

local tables = {}  -- sku -> {entry -> {qty, expected, kind}}, as it will be written
local function table_of(sku)
  if not tables[sku] then
    local t = {}
    local text = redis.call('HGET', KEYS[1], sku) or ''
    for e, q, x, k in string.gmatch(text, '([^\t\n]+)\t(%d+)\t(%d+)\t(%a)\n') do t[e] = {q, x, k} end
    tables[sku] = t
  end
  return tables[sku]
end

local function size(t)
  local c = 0
  for _ in pairs(t) do c = c + 1 end
  return c
end

local outcomes, ids, received = {}, {}, {}  -- ids: entry -> its new value, or false to forget it
for i = 0, n - 1 do
  local p = 7 + i * 6
  local entry, sku, qty, x, kind, op = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3], ARGV[p + 4], ARGV[p + 5]
  local cur = redis.call('HGET', KEYS[2], entry)
  local csku, cq, cx, ck = string.match(cur or '', '^([^\t]+)\t(%d+)\t(%d+)\t(%a)$')
  local out
  if cur and string.sub(cur, 1, 2) == 'R\t' then
    out = 'RECEIVED'  -- for good: a retry, or a feed sending it again
  elseif cur and string.sub(cur, 1, 2) == 'X\t' then
    if op == 'R' then return {'REFUSED', i + 1, 'CANCELLED', ''} end
    out = 'CANCELLED'
  elseif op == 'R' then
    if csku and csku ~= sku then return {'REFUSED', i + 1, 'SKU', csku} end
    if csku then table_of(csku)[entry] = nil end
    ids[entry] = 'R\t' .. sku
    received[#received + 1] = {sku, qty, entry}
    out = 'RECEIVED'
  elseif op == 'S' then
    if csku and csku ~= sku then return {'REFUSED', i + 1, 'SKU', csku} end
    local t = table_of(sku)
    if not csku then
      if size(t) >= most then return {'REFUSED', i + 1, 'FULL', ''} end
      out = 'CREATED'
    elseif cq == qty and cx == x and ck == kind then
      out = 'UNCHANGED'
    else
      out = 'UPDATED'
    end
    t[entry] = {qty, x, kind}
    ids[entry] = sku .. '\t' .. qty .. '\t' .. x .. '\t' .. kind
  else
    if csku then table_of(csku)[entry] = nil end
    if op == 'X' then
      ids[entry] = 'X\t' .. (csku or sku)
      out = 'CANCELLED'
    else
      ids[entry] = false
      out = 'DROPPED'
    end
  end
  outcomes[i + 1] = out
end

local short = {}
for j = 0, m - 1 do
  local p = m_at + 1 + j * 4
  local d = tonumber(ARGV[p + 1])
  if d < 0 then
    local a = available(read_row(KEYS[tonumber(ARGV[p + 2])], ARGV[p]))
    if a < -d then
      short[#short + 1] = ARGV[p]
      short[#short + 1] = a
    end
  end
end
if #short > 0 then
  table.insert(short, 1, 'SHORT')
  return short
end
if dry then return {'OK', outcomes} end

-- Units (d, signed) land on a row or leave it, logged at now under `why`.
local function add_stock(key, log, sku, d, why)
  local r = read_row(key, sku)
  r[1] = r[1] + tonumber(d)
  write_row(key, sku, r)
  redis.call('ZADD', log, now, sku .. '\t' .. why .. '\t' .. d)
end

for j = 0, m - 1 do
  local p = m_at + 1 + j * 4
  add_stock(KEYS[tonumber(ARGV[p + 2])], KEYS[tonumber(ARGV[p + 3])], ARGV[p], ARGV[p + 1], tag)
end

for sku, t in pairs(tables) do
  local list = {}
  for e, v in pairs(t) do list[#list + 1] = {e, v} end
  table.sort(list, function(a, b)
    local xa, xb = tonumber(a[2][2]), tonumber(b[2][2])
    if xa ~= xb then return xa < xb end
    return a[1] < b[1]
  end)
  if #list == 0 then
    redis.call('HDEL', KEYS[1], sku)
  else
    local parts = {}
    for _, e in ipairs(list) do
      parts[#parts + 1] = e[1] .. '\t' .. e[2][1] .. '\t' .. e[2][2] .. '\t' .. e[2][3] .. '\n'
    end
    redis.call('HSET', KEYS[1], sku, table.concat(parts))
  end
end
for entry, v in pairs(ids) do
  if v then redis.call('HSET', KEYS[2], entry, v) else redis.call('HDEL', KEYS[2], entry) end
end
local loc = slot_of(KEYS[1])
local converted, broken = {}, {}

-- A part's future line of sku: qty units waiting, promised by `promise` (0: broken); qty 0:
-- none waits any more (held on hand).
local function mark(id, sku, qty, promise)
  local rec = loc .. ':r:' .. id
  local future = parse_future_lines(redis.call('HGET', rec, 'fl'))
  future[sku] = qty > 0 and {qty, promise} or nil
  write_future_lines(rec, future)
end

local k_at = m_at + 1 + tonumber(ARGV[m_at]) * 4  -- m may be 0 by now (a B step: above)
local rows = {}  -- sku -> {stock key, log key}
for j = 0, tonumber(ARGV[k_at]) - 1 do
  local p = k_at + 1 + j * 3
  rows[ARGV[p]] = {KEYS[tonumber(ARGV[p + 1])], KEYS[tonumber(ARGV[p + 2])]}
end
for _, x in ipairs(received) do
  add_stock(rows[x[1]][1], rows[x[1]][2], x[1], x[2], x[3])
end
local settle, seen = {}, {}  -- every row whose supply changed, and every row received into
for _, t in ipairs({tables, rows}) do
  for sku in pairs(t) do
    if not seen[sku] then settle[#settle + 1], seen[sku] = sku, true end
  end
end
table.sort(settle)
for _, sku in ipairs(settle) do
  local key = future_key(KEYS[1], sku)
  local holds = read_future(key)
  local left, took = holds, 0
  if #holds > 0 and rows[sku] then
    local stock = rows[sku][1]
    local r = read_row(stock, sku)
    local a = available(r)
    left = {}
    for _, h in ipairs(holds) do
      local take = math.min(h[2], a)
      if take > 0 then
        a, took = a - take, took + take
        r[2] = r[2] + take
        mark(h[1], sku, h[2] - take, h[3])  -- (a part with a promise has no channel)
        for _, v in ipairs({h[1], sku, take}) do converted[#converted + 1] = v end
        h[2] = h[2] - take
      end
      if h[2] > 0 then left[#left + 1] = h end
    end
    if took > 0 then write_row(stock, sku, r) end
  end
  if #holds > 0 then  -- (a row with none has nothing to settle)
    local supply = read_supply(KEYS[1], sku)
    local kept, lost = cover(supply, left)
    for _, h in ipairs(lost) do
      mark(h[1], sku, h[2], 0)
      for _, v in ipairs({h[1], sku, h[2], h[3]}) do broken[#broken + 1] = v end
    end
    write_future(key, kept, supply)  -- its span totals follow the supply as it is now
  end
end

if step ~= '' then
  redis.call('HSET', KEYS[3], step, now)
  if letter == 'B' then redis.call('HSETNX', KEYS[3], tid .. '\tS', now) end
  if letter == 'D' then redis.call('HSETNX', KEYS[3], tid .. '\tI', now) end
end
return {'OK', outcomes, converted, broken}
