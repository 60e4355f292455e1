-- Shared helpers, prepended to every script when it is loaded (engine/store/scripts.py).
-- A stock row is one hash field of its location's bucket: sku -> "on_hand,reserved,safety,version,as_of".
-- A sku's units in another state are a row of their own, "sku#<state>" (engine/store/keys.py).

local function read_row(key, sku)
  local v = redis.call('HGET', key, sku)
  if not v then return {0, 0, 0, 0, 0} end
  local a, b, c, d, e = string.match(v, '^(-?%d+),(%d+),(%d+),(%d+),(%d+)$')
  return {tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e)}
end

-- Every write of a row is published on its location's shard channel, for watchers
-- (engine/store/watch.py) and the read cache: "sku\t<the row as stored>", then `note`
-- when what a sales channel may take of the row changed beside it (hold_channel, pools_note;
-- engine/store/codecs.py reads it). Every script that writes rows is given that channel as
-- its last ARGV (engine/store/keys.py names it: Keys.changes). A state row ("sku#<state>")
-- is not published: no watcher or cache of sellable rows sees one.
local function write_row(key, sku, r, note)
  r[4] = r[4] + 1
  local value = string.format('%d,%d,%d,%d,%d', r[1], r[2], r[3], r[4], r[5])
  redis.call('HSET', key, sku, value)
  if not string.find(sku, '#', 1, true) then
    redis.call('SPUBLISH', ARGV[#ARGV], sku .. '\t' .. value .. (note or ''))
  end
end

-- Moves what channel `ch` holds of a row ({L}:h: "sku\tchannel" -> units) by delta; answers
-- the note of its new count ("\nh\t<channel>\t<units>") for the row's change message, which
-- must be written after it (nil: no channel, nothing moved).
local function hold_channel(held_key, sku, ch, delta)
  if not ch or ch == '' or delta == 0 then return nil end
  local field = sku .. '\t' .. ch
  local units = redis.call('HINCRBY', held_key, field, delta)
  if units <= 0 then
    redis.call('HDEL', held_key, field)
    units = 0
  end
  return '\nh\t' .. ch .. '\t' .. units
end

local function available(r)
  local a = r[1] - r[2] - r[3]
  if a < 0 then return 0 end
  return a
end

-- A row's pools ({L}:p) and what each pool's channel holds of it ({L}:h), as the note of
-- its change message: "\nP", then "\np\t<channel>\t<units>\t<fallback>" a pool and
-- "\nh\t<channel>\t<units>" a pool's channel (the pools replace those known before).
local function pools_note(pools_key, held_key, sku)
  local out = {'\nP'}
  for c, units, fb in string.gmatch(redis.call('HGET', pools_key, sku) or '', '([^\t\n]+)\t(%d+)\t([01])\n') do
    out[#out + 1] = '\np\t' .. c .. '\t' .. units .. '\t' .. fb
    out[#out + 1] = '\nh\t' .. c .. '\t' .. (redis.call('HGET', held_key, sku .. '\t' .. c) or '0')
  end
  return table.concat(out)
end

-- What a sales channel may still hold of a row: the one formula, for its holds (hold.lua)
-- and for reads (read_offers.lua). The row's pools ({L}:p: sku -> "channel\tunits\tfallback\n"
-- ...) keep units for their channels: a pool's free units are what its channel does not hold of it
-- ({L}:h). Every other channel sees only the units no pool keeps free (shared), less its
-- buffer, and (share < 1000000, in millionths) no more than that share of the row's
-- sellable units (on_hand - safety) less what it holds already. A pool's own channel sees
-- its free units (no more than are there), and with fallback the shared ones as well.
local function channel_available(r, held_key, pools_key, sku, ch, buffer, share)
  local there = available(r)
  local free_total, mine, fallback = 0, nil, false
  local text = redis.call('HGET', pools_key, sku)
  if text then
    for c, units, fb in string.gmatch(text, '([^\t\n]+)\t(%d+)\t([01])\n') do
      local free = tonumber(units) - tonumber(redis.call('HGET', held_key, sku .. '\t' .. c) or '0')
      if free < 0 then free = 0 end
      free_total = free_total + free
      if c == ch then mine, fallback = free, fb == '1' end
    end
  end
  local a = there - free_total
  if a < 0 then a = 0 end
  a = a - buffer
  if share < 1000000 then
    local held = tonumber(redis.call('HGET', held_key, sku .. '\t' .. ch) or '0')
    local sellable = r[1] - r[3]
    if sellable < 0 then sellable = 0 end
    -- floor(sellable x share / 10^6), split so that no product passes 2^53 (exact in
    -- Lua's doubles whatever on_hand a run of DELTAs has built)
    local whole = math.floor(sellable / 1000000)
    local room = whole * share + math.floor((sellable - whole * 1000000) * share / 1000000) - held
    if room < a then a = room end
  end
  if a < 0 then a = 0 end
  if mine == nil then return a end
  if mine > there then mine = there end
  if fallback then return mine + a end
  return mine
end

-- "sku\tqty\n..." -> {{sku, qty}, ...}
local function parse_lines(text)
  local out = {}
  for sku, qty in string.gmatch(text or '', '([^\t\n]+)\t(%d+)\n') do
    out[#out + 1] = {sku, tonumber(qty)}
  end
  return out
end

-- ARGV from position i on: n triples (sku, a, b) -> map sku -> {a, b}
local function key_map(argv, i, n)
  local m = {}
  for j = 0, n - 1 do
    local p = i + j * 3
    m[argv[p]] = {tonumber(argv[p + 1]), tonumber(argv[p + 2])}
  end
  return m
end

-- The gate of every step on a reservation part (commit, release, extend): nil when the part
-- is HELD (and, when `now` is given, not past its expiry `x`), else what the step answers:
-- {'MISSING'}, {done, 0} when the part is already where the step leads (done: 'COMMITTED',
-- 'RELEASED', or false for none), or {'STATE', its state} ('EXPIRED' once past its expiry).
local function part_gate(state, x, done, now)
  if not state then return {'MISSING'} end
  if done and state == done then return {done, 0} end
  if state ~= 'HELD' then return {'STATE', state} end
  if now and tonumber(x) <= now then return {'STATE', 'EXPIRED'} end
  return nil
end

-- The reservation directory (res:{<id>}) is the authority on what an id means (I4):
-- its fingerprint field 'f' names the lines (and the principal that made it), its saga
-- field 'g' is '' once settled, its owner field 'o' names that principal ('' when open),
-- and 'u' the customer it was held for (per-customer limits), if any.
-- Returns false when absent, 'CONFLICT' when the id holds other lines, else the saga field.
local function read_dir(key, fp)
  local cur = redis.call('HMGET', key, 'f', 'g')
  if not cur[1] then return false end
  if cur[1] ~= fp then return 'CONFLICT' end
  return cur[2] or ''
end

-- Whether a MoveLine moved (or is moving) the reservation's lines: its lines' generation
-- (field n) has moved on, or its saga field (as read_dir read it) is MOVING:<token>. Such an
-- id never holds anew: a Reserve sent again finds it as it is now (engine/usecases/moves.py).
local function was_moved(key, saga)
  if string.sub(saga, 1, 7) == 'MOVING:' then return true end
  return (redis.call('HGET', key, 'n') or '0') ~= '0'
end

-- maker: the principal, and the customer (field 'u') after a tab when the hold names one.
local function write_dir(key, fp, lines, saga, ttl_ms, maker)
  local owner, customer = string.match(maker, '^([^\t]*)\t(.+)$')
  if owner then
    redis.call('HSET', key, 'f', fp, 'l', lines, 'g', saga, 'o', owner, 'u', customer)
  else
    redis.call('HSET', key, 'f', fp, 'l', lines, 'g', saga, 'o', maker)
  end
  redis.call('PEXPIRE', key, ttl_ms)
end

-- Pick capacity for ship-from-store: {L}:c is a hash, day (YYYYMMDD, UTC) -> orders picked
-- that day at L. A hold of a plan takes one (recording the day on its part, field 'c'); its
-- release or expiry gives it back; a commit keeps it. Days before keep_from are dropped.
local function take_capacity(key, day, keep_from)
  redis.call('HINCRBY', key, day, 1)
  if redis.call('HLEN', key) > 3 then
    for _, d in ipairs(redis.call('HKEYS', key)) do
      if d < keep_from then redis.call('HDEL', key, d) end
    end
  end
end

local function give_capacity(key, day)
  local used = tonumber(redis.call('HGET', key, day) or '0')
  if used > 0 then redis.call('HINCRBY', key, day, -1) end
end

-- The store's reports of sales under a part that came while it was HELD (field 'e',
-- "sku\tdelta\tsource_time\tevent id\n"...) count as the DELTAs they are once the part no
-- longer holds their sku, unless a count taken after them already includes them.
-- only: the one sku whose reports count now (nil: every sku); keys_of(sku): its stock
-- bucket key and change log key. Returns the reports kept (those of other skus).
local function count_echoes(text, only, keys_of)
  local kept = {}
  for sku, d, t, eid in string.gmatch(text or '', '([^\t\n]+)\t(-?%d+)\t(%d+)\t([^\n]+)\n') do
    if only and sku ~= only then
      kept[#kept + 1] = sku .. '\t' .. d .. '\t' .. t .. '\t' .. eid .. '\n'
    else
      local key, log = keys_of(sku)
      local r = read_row(key, sku)
      if tonumber(t) > r[5] then
        r[1] = r[1] + tonumber(d)
        write_row(key, sku, r)
        redis.call('ZADD', log, tonumber(t), sku .. '\te:' .. eid .. '\t' .. d)
      end
    end
  end
  return table.concat(kept)
end

-- Future holds (promise_by): a part's line may be held in part against supply due by its
-- promise date rather than on hand. The part's 'l' keeps the whole line; its 'fl' says how
-- many of its units wait for supply: "sku\tqty\tpromise_ms\n"... (promise 0: broken, no
-- supply covers them any more: they hold nothing). A row's future holds are a hash of its
-- own, {L}:uf:<sku>: id -> "qty\tpromise_ms\tmade_ms", and field '=' (no id's name) the
-- units promised within each span between the row's supply dates: "date\tunits\n"...
-- (date: the supply date the span starts at, 0 before the first), so that a hold checks
-- them in the row's supply, not in its holds (supply.lua rebuilds it whenever the supply
-- changes). Only the hold scripts, unhold and supply.lua write it.
-- The hash tag a key of a location's slot starts with: "{L}".
local function slot_of(key)
  return string.match(key, '^({[^}]*}):')
end

local function future_key(key, sku)
  return slot_of(key) .. ':uf:' .. sku
end

-- A row's supply ({L}:u, as supply.lua keeps it: by expected time): {{expected, qty}, ...}
local function read_supply(key, sku)
  local out = {}
  for _, q, x in string.gmatch(redis.call('HGET', key, sku) or '', '([^\t\n]+)\t(%d+)\t(%d+)\t%a\n') do
    out[#out + 1] = {tonumber(x), tonumber(q)}
  end
  return out
end

-- The spans of a row's supply: {{start, units due by then}, ...}, the first {0, 0}.
local function spans(supply)
  local out, due = {{0, 0}}, 0
  for _, s in ipairs(supply) do
    due = due + s[2]
    if s[1] == out[#out][1] then out[#out][2] = due else out[#out + 1] = {s[1], due} end
  end
  return out
end

-- The start of the span a promise date falls in.
local function span_of(sp, promise)
  local at = 0
  for _, s in ipairs(sp) do
    if s[1] <= promise then at = s[1] end
  end
  return at
end

local function read_totals(key)
  local out = {}
  for d, u in string.gmatch(redis.call('HGET', key, '=') or '', '(%d+)\t(%d+)\n') do out[tonumber(d)] = tonumber(u) end
  return out
end

local function write_totals(key, totals)
  local parts = {}
  for d, u in pairs(totals) do
    if u > 0 then parts[#parts + 1] = string.format('%d\t%d\n', d, u) end
  end
  table.sort(parts)
  if #parts == 0 then redis.call('HDEL', key, '=') else redis.call('HSET', key, '=', table.concat(parts)) end
end

-- The most units a new future hold promised by `promise` may take (I9): the least, over the
-- spans from the promise's on, of the supply due by the span's start less every unit
-- promised before the next span starts (within a span supply is flat and promises only
-- add up, so its last moment is its tightest).
local function room(sp, totals, promise)
  local from, promised, least = span_of(sp, promise), 0, nil
  for _, s in ipairs(sp) do
    promised = promised + (totals[s[1]] or 0)
    if s[1] >= from then
      local r = s[2] - promised
      if not least or r < least then least = r end
    end
  end
  return least
end

-- Units promised by `promise` join (delta > 0) or leave the row's span totals.
local function add_total(key, sp, promise, delta)
  local totals, at = read_totals(key), span_of(sp, promise)
  totals[at] = (totals[at] or 0) + delta
  write_totals(key, totals)
end

-- A row's future holds, {{id, qty, promise, made}, ...}, by (promise, made, id).
local function read_future(key)
  local flat, out = redis.call('HGETALL', key), {}
  for i = 1, #flat, 2 do
    if flat[i] ~= '=' then
      local q, p, t = string.match(flat[i + 1], '^(%d+)\t(%d+)\t(%d+)$')
      out[#out + 1] = {flat[i], tonumber(q), tonumber(p), tonumber(t)}
    end
  end
  table.sort(out, function(a, b)
    if a[3] ~= b[3] then return a[3] < b[3] end
    if a[4] ~= b[4] then return a[4] < b[4] end
    return a[1] < b[1]
  end)
  return out
end

-- Writes a row's future holds anew (after supply.lua settled them), with their span totals.
local function write_future(key, list, supply)
  redis.call('DEL', key)
  if #list == 0 then return end
  local sp, totals, fields = spans(supply), {}, {}
  for _, h in ipairs(list) do
    fields[#fields + 1] = h[1]
    fields[#fields + 1] = string.format('%d\t%d\t%d', h[2], h[3], h[4])
    local at = span_of(sp, h[3])
    totals[at] = (totals[at] or 0) + h[2]
  end
  for i = 1, #fields, 1000 do  -- (unpack has a bound on the values it returns)
    redis.call('HSET', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
  write_totals(key, totals)
end

-- A part's field fl: sku -> {units waiting, promise}.
local function parse_future_lines(text)
  local out = {}
  for sku, q, p in string.gmatch(text or '', '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    out[sku] = {tonumber(q), tonumber(p)}
  end
  return out
end

local function write_future_lines(rec, future)
  local lines = {}
  for sku, f in pairs(future) do lines[#lines + 1] = string.format('%s\t%d\t%d\n', sku, f[1], f[2]) end
  table.sort(lines)
  if #lines == 0 then redis.call('HDEL', rec, 'fl') else redis.call('HSET', rec, 'fl', table.concat(lines)) end
end

-- Which future holds a row's supply covers (I9): in promise order, each is kept when the
-- supply due by its promise covers it with those kept before it; the rest are broken. Every
-- hold is kept exactly when they can all be covered (the supply due by a date serves any
-- promise from that date on, so the earliest promises first is the best order).
-- holds: as read_future sorts them. Returns kept, broken.
local function cover(supply, holds)
  local kept, broken, taken, due, s = {}, {}, 0, 0, 1
  for _, h in ipairs(holds) do
    while s <= #supply and supply[s][1] <= h[3] do
      due = due + supply[s][2]
      s = s + 1
    end
    if taken + h[2] <= due then
      taken = taken + h[2]
      kept[#kept + 1] = h
    else
      broken[#broken + 1] = h
    end
  end
  return kept, broken
end

-- A part's future holds leave their rows.
local function drop_future(rec, id, future)
  for sku, f in pairs(future) do
    if f[2] > 0 then
      local key = future_key(rec, sku)
      redis.call('HDEL', key, id)
      if redis.call('HLEN', key) <= 1 then
        redis.call('DEL', key)
      else
        add_total(key, spans(read_supply(slot_of(rec) .. ':u', sku)), f[2], -f[1])
      end
    end
  end
end

-- Takes a HELD reservation part off the rows it holds: reserved drops by each line's qty
-- held on hand, its future holds go, and the store's reports of its sales count
-- (count_echoes). buckets: sku -> {stock idx, log idx}. A part that took pick capacity gives
-- it back to `cap` ({L}:c); one held for a sales channel leaves its count in `held` ({L}:h).
local function unhold(rec, due, cap, held, id, state, buckets, retention_ms)
  local cur = redis.call('HMGET', rec, 'l', 'e', 'c', 'ch', 'fl')
  local lines = parse_lines(cur[1])
  local future = parse_future_lines(cur[5])
  for _, ln in ipairs(lines) do
    local f = future[ln[1]]
    if f then ln[2] = ln[2] - f[1] end
    local key = KEYS[buckets[ln[1]][1]]
    local r = read_row(key, ln[1])
    r[2] = r[2] - ln[2]
    write_row(key, ln[1], r, hold_channel(held, ln[1], cur[4], -ln[2]))
  end
  if cur[5] then
    drop_future(rec, id, future)
    redis.call('HDEL', rec, 'fl')
  end
  count_echoes(cur[2], nil, function(sku) return KEYS[buckets[sku][1]], KEYS[buckets[sku][2]] end)
  if cur[2] then redis.call('HDEL', rec, 'e') end
  if cur[3] then give_capacity(cap, cur[3]) end
  redis.call('HSET', rec, 's', state)
  redis.call('ZREM', due, id)
  redis.call('PEXPIRE', rec, retention_ms)
end

-- Whether a part's lines (field 'l') are `want` ("sku\tqty\n"..., in any order): a commit or
-- release at one location names the lines it read, and a part whose lines a MoveLine has
-- changed since answers MOVED instead (engine/usecases/moves.py).
local function same_lines(text, want)
  local wanted, n = {}, 0
  for _, ln in ipairs(parse_lines(want)) do
    wanted[ln[1]] = ln[2]
    n = n + 1
  end
  local got = parse_lines(text)
  if #got ~= n then return false end
  for _, ln in ipairs(got) do
    if wanted[ln[1]] ~= ln[2] then return false end
  end
  return true
end

-- A MoveLine attempt is named by a token (32 hex digits); a part keeps the tokens of the
-- attempts that took a line off it (field 'mo') and of those rolled back at it ('mx'), one a
-- line. (No token is part of another: they are all of one length, and '\n' is no hex digit.)
local function has_token(list, token)
  return list and string.find(list, token, 1, true) ~= nil
end

local function add_token(rec, field, list, token)
  redis.call('HSET', rec, field, (list or '') .. token .. '\n')
end

-- Takes `qty` of one sku off a HELD part (its line moved to another location, or a move into
-- the part rolled back): the row's reserved and the channel's count drop by qty; once the
-- part holds none of the sku, the store's reports of its sales count (count_echoes); once it
-- holds nothing, it is RELEASED (pick capacity given back, off the expiry index, remembered
-- for the retention). stock, log: the sku's bucket and change log keys.
local function take_off(rec, due, cap, held, id, sku, qty, stock, log, retention_ms)
  local cur = redis.call('HMGET', rec, 'l', 'e', 'c', 'ch')
  local left, keeps_sku = {}, false
  for _, ln in ipairs(parse_lines(cur[1])) do
    local q = ln[2]
    if ln[1] == sku then q = q - qty end
    if q > 0 then
      left[#left + 1] = string.format('%s\t%d\n', ln[1], q)
      keeps_sku = keeps_sku or ln[1] == sku
    end
  end
  local r = read_row(stock, sku)
  r[2] = r[2] - qty
  write_row(stock, sku, r, hold_channel(held, sku, cur[4], -qty))
  if cur[2] and not keeps_sku then
    local kept = count_echoes(cur[2], sku, function() return stock, log end)
    if kept == '' then redis.call('HDEL', rec, 'e') else redis.call('HSET', rec, 'e', kept) end
  end
  redis.call('HSET', rec, 'l', table.concat(left))
  if #left == 0 then
    if cur[3] then give_capacity(cap, cur[3]) end
    redis.call('HSET', rec, 's', 'RELEASED')
    redis.call('ZREM', due, id)
    redis.call('PEXPIRE', rec, retention_ms)
  end
end
