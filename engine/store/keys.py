"""Every key and channel name the engine uses, in one place: nothing else names one, and
the Lua scripts get theirs in KEYS.

Key layout. Every key of one location carries its hash tag `{L}`, so each per-location
script touches one hash slot and runs unchanged on Redis Cluster.

    {L}:s:<b>      hash   stock rows of bucket b: sku -> "on_hand,reserved,safety,version,as_of";
                          and the units of a sku in another state (damaged, quality_control,
                          returned), a row of its own: "sku#<state>" -> the same format
                          (reserved, safety 0), in the bucket of the sku (see below)
    {L}:d:<b>      zset   changes after the last count of bucket b's rows (DELTAs and commits),
                          member "sku\\t<e:event id | c:reservation id>\\t<signed qty>",
                          score = time (ms)
    {L}:e          zset   stock event ids applied at L ("<source>|<event id>", or the event id
                          of an event with no source), scored by arrival (the dedupe window)
    {L}:f          string the time of the latest full count of L that zeroed what it did not
                          list: every row of L counts as counted then (apply_events.lua)
    {L}:q          hash   per source that numbers its events: "<source>" -> the highest number
                          seen at L, "<source>\tr" -> the number below which its gaps were reported
    {L}:g:<source> zset   a numbered source's gaps at L: numbers not seen yet below its highest,
                          member "from\tto\topened (ms)", score = from (apply_events.lua)
    {L}:r:<id>     hash   reservation <id>'s part at L: s state, x expiry, f fingerprint, l lines,
                          t when it was held (ms), ch its sales channel, c the day of the pick
                          capacity it took, e the store's reports of its sales while HELD,
                          fl its lines' units held against future supply (see {L}:uf:<sku>);
                          of MoveLine (move_in.lua, move_out.lua): mi the attempt that moved a
                          line in ("token\tsku\tqty"), mo the attempts that moved one out, mx
                          those rolled back here (tokens, one a line)
    {L}:x          zset   the expiry index of L: reservation id -> expiry (ms) of each HELD part
    {L}:c          hash   pick capacity used: day (YYYYMMDD, UTC) -> ship-from-store orders held
    {L}:h          hash   units held per row for each sales channel: "sku\tchannel" -> units, kept
                          by the scripts that hold, commit, release and expire (hold.lua)
    {L}:p          hash   the rows' pools: sku -> "channel\tunits\tfallback\n"... (set_pools.lua)
    {L}:w          shard channel: every sellable row written at L, as written
                          (engine/store/watch.py); a state row's writes are not published
    {L}:n:<id>     string return <id> recorded at L (record_return.lua): "fp\n" then the
                          landed lines "sku\tqty\tstate\n"..., kept for the retention
    {L}:b:<b>      hash   the stock band last found of bucket b's rows, per sales channel with
                          bands: sku -> "<band><channel>\\n"... (band I, L or O; band_check.lua)
    {L}:bq         list   L's band crossings not yet known to be on the alerts stream, oldest
                          first: "n\\tsku\\tchannel\\twas\\tstatus\\tavailable\\tversion\\tat"
    {L}:bn         string the number n of L's last band crossing
    {L}:u          hash   future supply due at L by sku:
                          sku -> "entry\\tqty\\texpected_ms\\tkind\\n"..., by expected time
                          (kind P purchase order, A ASN, T transfer; entry
                          "p:<supply id>", or "t:<transfer id>|<sku>" for a transfer in
                          transit to L): read with the row in one script (read_promise.lua,
                          hold.lua for a line with a promise date), written by supply.lua
    {L}:uf:<sku>   hash   the row's future holds (a line held in part against supply due by
                          its promise date: hold.lua): id -> "qty\tpromise_ms\tmade_ms", and
                          field '=' the units promised in each span between the row's supply
                          dates ("date\tunits\n"...: _prelude.lua); converted or broken by
                          supply.lua, dropped with their part (unhold). A part's field fl:
                          "sku\tqty\tpromise_ms\n"... (promise 0: broken, no supply covers
                          them; they hold nothing)
    {L}:ui         hash   the same supply by entry: entry -> "sku\\tqty\\texpected_ms\\tkind",
                          or "X\\tsku" once cancelled (a cancelled id stays so: supply.lua)
    {L}:t          hash   the steps of transfers made at L: "<transfer id>\\t<step>" -> when
                          (ms); step S shipped out, I in transit in, R received, D in transit
                          dropped, B back at L (cancelled after shipping): each made once
    transfer:{<id>} hash  a transfer's record: s state, f fingerprint, from, to, l lines, x
                          expected arrival, r what was received, b its units went back
                          (transfer.lua; engine/usecases/transfers.py)
    res:{<id>}     hash   the reservation directory: f fingerprint, l all lines, g saga field,
                          o the principal that made it ('' on an open server), u its customer;
                          of MoveLine: n the lines' generation (moves made), m the move under
                          way ("move id\tlocation\tsku\tqty\tto"), d:<move id> the move it made;
                          of RecordReturn (claim_return.lua): rt:<return id> the return's
                          fingerprint, rq:<sku> the units of sku returned under it so far
    principal:{<name>}:held  hash  a storefront principal's HELD reservations -> "units,expiry",
                          counted against its cap on units held at once (budget.lua)
    customer:{<id>}:<sku>  hash  a customer's reservations of a limited sku -> "units,until":
                          held (until the hold's expiry) or bought (until the commit + the
                          limit's window), counted against the limit (budget.lua)
    {omnistock}:locations  hash  location id -> JSON
    {omnistock}:locations:v  counter  moves with every upsert, so caches know when to reload
    {omnistock:w<k>}:wake  zset  location -> a time at or before its earliest HELD expiry,
                          for the locations of shard k = crc32(location) mod SHARDS
    {omnistock:s<k>}:sagas zset  reservation id -> time after which recovery may act, for
                          the ids of shard k = crc32(id) mod SHARDS
    {omnistock}:map:<source>  hash  a source's ids -> ours: "l:<its location id>" -> location,
                          "i:<its item id>" -> sku (only mappings live under this prefix)
    {omnistock}:mapv       counter  moves with every change of a mapping
    {omnistock}:channels   hash  sales channels' rules: "<scope>\t<channel>" -> "buffer,max_share"
                          (scope "l:<location>", "t:<TYPE>" or "*"; max_share '' for none)
    {omnistock}:channels:v counter  moves with every change of a rule, a band, a pool or a limit
    {omnistock}:bands      hash  stock bands: "<scope>\t<channel>" -> "low,out" (scope
                          "r\t<loc>\t<sku>", "l:<location>", "t:<TYPE>" or "*"; channel '': any)
    {omnistock}:limits     hash  per-customer limits: sku -> "max_units,window_ms"
    {omnistock}:networks   hash  location networks: name -> JSON (its location ids and selectors)
    {omnistock}:networks:v counter  moves with every change of a network
    {omnistock}:bundles    hash  bundles and kits: bundle sku -> "component\tqty\n"... (its
                          components; versioned with the channels' rules, {omnistock}:channels:v)
    {omnistock}:returns    hash  return rules: "<location>\t<sku>" -> "1" (to sellable) or "0"
                          (to returned); location or sku '' for any (SetReturnRules)
    {omnistock}:returns:v  counter  moves with every change of a return rule
    {omnistock}:alerts  stream  what an operator should hear of (kind: a shortage, a row a
                          count or delta left short; a sequence_gap; a clock_skew of a source;
                          a band, a row's crossing into LOW or OUT for a channel)
    {omnistock}:bands:alerted  hash  location -> the number of its last band crossing put on the
                          alerts stream (band_publish.lua: each crossing goes there once)
    {omnistock}:bands:lead, {omnistock}:bands:next  string  the leases of the band crossings'
                          detector and of its standby: the holding process's token
                          (engine/usecases/bandalerts.py)
    {omnistock}:sources  set  the name of every source that sent stock events ("" for none)
    {source:<name>}:stats  hash  what the server processes saw of a source: events, last_arrival,
                          last_source_time, clock_offset_ms, clock (engine/usecases/sources.py)
    {omnistock}:epoch      string  a random token the read caches set when it is missing: gone
                          or changed, the store was flushed (engine/store/rowcache.py)

Rows live in buckets, b = crc32(sku) mod `stock_buckets`, so that each bucket stays a small
listpack-encoded hash: a stock row then costs about 40 bytes instead of the ~100 a hash
table entry or a key of its own would (measured: tests/test_storage.py, bench/RESULTS.md).

States (engine/domain/states.py). A sku's units in another state than sellable are a row of
their own, "sku#<state>", in the sku's bucket (b is taken of the part before '#'), so that
a MOVE between states touches one hash and one change log, and the scripts apply counts and
deltas to a state row exactly as to a sellable one: I5 holds per state by construction.
No caller's id holds '#' (check_id), so no sku reads as a state row. Readers keep state rows
out of every sellable view: scripts read rows by name (a sku), never a whole bucket; the one
whole-bucket read (Storage.rows_at, a full count's zeroing) drops them; and write_row
publishes no state row on {L}:w, so the watchers, the read caches, the network view and
the band detector never see one. Its change log entries start "sku#<state>\t", never
"sku\t". A row without other states costs what it did: no field, no read, no message more.
A full count's mark ({L}:f) covers sellable rows only (apply_events.lua).
"""

from __future__ import annotations

import zlib

from engine.domain.states import STATE_MARK, sku_of

LOCATIONS = "{omnistock}:locations"
LOCATIONS_VERSION = "{omnistock}:locations:v"
# The wake-up and sagas indexes are each spread over SHARDS keys of their own hash tags, so
# that on a cluster no one slot is written by every Reserve (and no one node's failure
# stops every location's sweep and recovery). The sweeper reads all of them, one pipeline.
SHARDS = 16
WAKES = tuple(f"{{omnistock:w{k}}}:wake" for k in range(SHARDS))
SAGAS = tuple(f"{{omnistock:s{k}}}:sagas" for k in range(SHARDS))
# Where they were, as one key each, before (moved into the shards at start: Parts.migrate).
OLD_WAKE, OLD_SAGAS = "{omnistock}:wake", "{omnistock}:sagas"
MAPPINGS_VERSION = "{omnistock}:mapv"
CHANNEL_RULES = "{omnistock}:channels"
CHANNEL_RULES_VERSION = "{omnistock}:channels:v"
BANDS = "{omnistock}:bands"
LIMITS = "{omnistock}:limits"
BUNDLES = "{omnistock}:bundles"
NETWORKS = "{omnistock}:networks"
NETWORKS_VERSION = "{omnistock}:networks:v"
RETURN_RULES = "{omnistock}:returns"
RETURN_RULES_VERSION = "{omnistock}:returns:v"
ALERTS = "{omnistock}:alerts"
ALERTS_KEPT = 100_000  # about: the stream is trimmed to the newest this many
BANDS_ALERTED = "{omnistock}:bands:alerted"
LEASES = ("{omnistock}:bands:lead", "{omnistock}:bands:next")  # the detector's, its standby's
SOURCES = "{omnistock}:sources"
EPOCH = "{omnistock}:epoch"

# What the engine needs of Redis, as an ACL (docs/security.md): its keys (every one carries
# a hash tag: `{L}:...`, `{omnistock}:...`, `res:{id}`, `principal:{name}:held`,
# `transfer:{id}`; and the ingest adapters' dead letters, `<stream>:dead`, which operators
# list and delete), its row-change channels, and the commands of its scripts and reads; no
# admin or dangerous command but INFO (is it a cluster?) and the cluster topology the
# cluster client reads.
ACL_RULES = (
    "resetkeys ~{*}:* ~res:{*} ~transfer:{*} ~principal:{*}:held ~customer:{*}:* ~*:dead "
    "resetchannels &{*}:w "
    "-@all +@read +@write +@scripting +@pubsub +@connection +@transaction -@dangerous "
    "-eval -eval_ro -script|flush -script|kill -function -fcall -fcall_ro "
    "+info +cluster|slots +cluster|shards +cluster|nodes +cluster|info +readonly"
)


class Keys:
    """Key names, in one place (see the module docstring). Each kind of key has a prefix
    of its own that no caller's id can reach (ids hold no braces), so no id names another
    kind's key: tests/test_edge.py checks it for every kind."""

    def __init__(self, stock_buckets: int) -> None:
        self.buckets = stock_buckets

    def bucket(self, sku: str) -> int:
        """The bucket of a row: of its sku's (a state row "sku#state" is in its sku's)."""
        if STATE_MARK in sku:
            sku = sku_of(sku)
        return zlib.crc32(sku.encode()) % self.buckets

    def stock(self, location: str, sku: str) -> str:
        return f"{{{location}}}:s:{self.bucket(sku)}"

    def log(self, location: str, sku: str) -> str:
        return f"{{{location}}}:d:{self.bucket(sku)}"

    def stock_buckets(self, location: str) -> list[str]:
        """Every stock bucket of a location."""
        return [f"{{{location}}}:s:{b}" for b in range(self.buckets)]

    def bands(self, location: str, sku: str) -> str:
        """The bands last found of a row (band_check.lua), in the bucket of its stock row."""
        return f"{{{location}}}:b:{self.bucket(sku)}"

    @staticmethod
    def band_outbox(location: str) -> str:
        return f"{{{location}}}:bq"

    @staticmethod
    def band_number(location: str) -> str:
        return f"{{{location}}}:bn"

    @staticmethod
    def changes(location: str) -> str:
        """The shard channel of a location's row changes (engine/store/watch.py); every
        script that writes rows is given it as its last ARGV (write_row in _prelude.lua)."""
        return f"{{{location}}}:w"

    @staticmethod
    def location_of_changes(channel: str) -> str:
        return channel[1 : -len("}:w")]

    @staticmethod
    def is_changes(value: object) -> bool:
        """Whether a script argument is a change channel (a row-writing script's last)."""
        return isinstance(value, str) and value.startswith("{") and value.endswith("}:w")

    @staticmethod
    def seen(location: str) -> str:
        return f"{{{location}}}:e"

    @staticmethod
    def source(name: str) -> str:
        return f"{{source:{name}}}:stats"

    @staticmethod
    def marks(location: str) -> str:
        return f"{{{location}}}:q"

    @staticmethod
    def gaps(location: str, source: str) -> str:
        return f"{{{location}}}:g:{source}"

    @staticmethod
    def part(location: str, reservation_id: str) -> str:
        return f"{{{location}}}:r:{reservation_id}"

    @staticmethod
    def returned(location: str, return_id: str) -> str:
        """A return recorded at a location (record_return.lua)."""
        return f"{{{location}}}:n:{return_id}"

    @staticmethod
    def channel_holds(location: str) -> str:
        return f"{{{location}}}:h"

    @staticmethod
    def pools(location: str) -> str:
        return f"{{{location}}}:p"

    @staticmethod
    def due(location: str) -> str:
        return f"{{{location}}}:x"

    @staticmethod
    def capacity(location: str) -> str:
        return f"{{{location}}}:c"

    @staticmethod
    def directory(reservation_id: str) -> str:
        return f"res:{{{reservation_id}}}"

    @staticmethod
    def full_count(location: str) -> str:
        return f"{{{location}}}:f"

    @staticmethod
    def mapping(source: str) -> str:
        return f"{{omnistock}}:map:{source}"

    @staticmethod
    def wake(location: str) -> str:
        return WAKES[zlib.crc32(location.encode()) % SHARDS]

    @staticmethod
    def sagas(reservation_id: str) -> str:
        return SAGAS[zlib.crc32(reservation_id.encode()) % SHARDS]

    @staticmethod
    def supply(location: str) -> str:
        return f"{{{location}}}:u"

    @staticmethod
    def future_holds(location: str, sku: str) -> str:
        return f"{{{location}}}:uf:{sku}"

    @staticmethod
    def supply_ids(location: str) -> str:
        return f"{{{location}}}:ui"

    @staticmethod
    def transfer_steps(location: str) -> str:
        return f"{{{location}}}:t"

    @staticmethod
    def transfer(transfer_id: str) -> str:
        return f"transfer:{{{transfer_id}}}"

    @staticmethod
    def held(principal: str) -> str:
        return f"principal:{{{principal}}}:held"

    @staticmethod
    def bought(customer: str, sku: str) -> str:
        return f"customer:{{{customer}}}:{sku}"


class KeyList:
    """KEYS of one script call: each distinct key once, addressed by its 1-based index."""

    def __init__(self, *fixed: str) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        for key in fixed:
            self.add(key)

    def add(self, key: str) -> int:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]
