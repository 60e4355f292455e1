"""The one seam to Redis: the key layout, the Lua scripts, and the translation of Redis
errors into ours. Nothing outside this module names a key or runs a command.

Key layout. Every key of one location carries its hash tag `{L}`, so each per-location
script touches one hash slot and runs unchanged on Redis Cluster.

    {L}:s:<b>      hash   stock rows of bucket b: sku -> "on_hand,reserved,safety,version,as_of"
    {L}:d:<b>      zset   changes after the last count of bucket b's rows (DELTAs and commits),
                          member "sku\\t<e:event id | c:reservation id>\\t<signed qty>",
                          score = time (ms)
    {L}:e          zset   stock event ids applied at L ("<source>|<event id>", or the event id
                          of an event with no source), scored by arrival (the dedupe window)
    {L}:f          string the time of the latest full count of L that zeroed what it did not
                          list: every row of L counts as counted then (apply_events.lua)
    {L}:r:<id>     hash   reservation <id>'s part at L: s state, x expiry, f fingerprint, l lines,
                          t when it was held (ms)
    {L}:x          zset   the expiry index of L: reservation id -> expiry (ms) of each HELD part
    {L}:c          hash   pick capacity used: day (YYYYMMDD, UTC) -> ship-from-store orders held
    {L}:w          shard channel: every row written at L, as written (engine/store/watch.py)
    res:{<id>}     hash   the reservation directory: f fingerprint, l all lines, g saga field,
                          o the principal that made it ('' on an open server)
    principal:{<name>}:held  hash  a storefront principal's HELD reservations -> "units,expiry",
                          counted against its cap on units held at once (budget.lua)
    {omnistock}:locations  hash  location id -> JSON
    {omnistock}:locations:v  counter  moves with every upsert, so caches know when to reload
    {omnistock}:wake       zset  location -> a time at or before its earliest HELD expiry
    {omnistock}:sagas      zset  reservation id -> time after which recovery may act
    {omnistock}:map:<source>  hash  a source's ids -> ours: "l:<its location id>" -> location,
                          "i:<its item id>" -> sku (only mappings live under this prefix)
    {omnistock}:mapv       counter  moves with every change of a mapping
    {omnistock}:shortages  stream  a shortage event for every row a count or delta left short

Rows live in buckets, b = crc32(sku) mod `stock_buckets`, so that each bucket stays a small
listpack-encoded hash: a stock row then costs about 40 bytes instead of the ~100 a hash
table entry or a key of its own would (measured: tests/test_storage.py, bench/RESULTS.md).

The directory lives in the slot of its reservation id, not of a location. On one Redis the
hold script of a single-location reservation writes it with the hold (one round trip); on a
Redis Cluster (engine.store.connect asks the server which it is) it never does: there every
Reserve is a saga (reservations.py). Everything else is the same on both: every script
touches one slot, and commands of several slots go in one pipeline, which the cluster
client splits by node.

Scripts run with EVALSHA; NOSCRIPT (an empty script cache after a Redis restart) loads them
and runs the call again, which is safe because every script here is idempotent.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from engine.domain.errors import Unavailable
from engine.domain.model import (
    EventOutcome,
    Line,
    Location,
    LocationType,
    StockEvent,
    StockRow,
)
from engine.store.replies import (
    Claim,
    ClaimReply,
    HoldReply,
    PartReply,
    ReleaseMode,
    Reply,
    claim_reply,
    hold_reply,
    part_reply,
)
from engine.throttle import Turns, gently

T = TypeVar("T")
LOCATIONS = "{omnistock}:locations"
LOCATIONS_VERSION = "{omnistock}:locations:v"
WAKE = "{omnistock}:wake"
SAGAS = "{omnistock}:sagas"
MAPPINGS_VERSION = "{omnistock}:mapv"
SHORTAGES = "{omnistock}:shortages"
SHORTAGES_KEPT = 100_000  # about: the stream is trimmed to the newest this many
# Reads of more rows than this (a long order's candidates, a wide GetAvailability or watch
# opening) are made one at a time in a process: a few of them at once fill the pipeline
# that every other call waits behind (bench/RESULTS.md, "Abuse": a one-event write went
# from 400 to 40 ms at p50 beside four 20,000-row Allocates).
BIG_READ = 2000
# Stock events applied by one script: a batch of 5,000 at one location holds Redis a few ms
# at a time instead of tens of ms at once.
EVENTS_PER_SCRIPT = 500
# What the engine needs of Redis, as an ACL (docs/security.md): its keys (every one carries
# a hash tag: `{L}:...`, `{omnistock}:...`, `res:{id}`, `principal:{name}:held`), its
# row-change channels, and the commands of its scripts and reads; no admin or dangerous
# command but INFO (is it a cluster?) and the cluster topology the cluster client reads.
ACL_RULES = (
    "resetkeys ~{*}:* ~res:{*} ~principal:{*}:held resetchannels &{*}:w "
    "-@all +@read +@write +@scripting +@pubsub +@connection +@transaction -@dangerous "
    "-eval -eval_ro -script|flush -script|kill -function -fcall -fcall_ro "
    "+info +cluster|slots +cluster|shards +cluster|nodes +cluster|info +readonly"
)


class Script:
    """A Lua file from engine/store/lua, prefixed with the shared helpers, run by SHA."""

    _prelude: str | None = None

    def __init__(self, name: str) -> None:
        files = importlib.resources.files("engine.store") / "lua"
        if Script._prelude is None:
            Script._prelude = (files / "_prelude.lua").read_text()
        self.name = name
        self.source = Script._prelude + "\n" + (files / f"{name}.lua").read_text()
        import hashlib

        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class Keys:
    """Key names, in one place (see the module docstring). Each kind of key has a prefix
    of its own that no caller's id can reach (ids hold no braces), so no id names another
    kind's key: tests/test_edge.py checks it for every kind."""

    def __init__(self, stock_buckets: int) -> None:
        self.buckets = stock_buckets

    def bucket(self, sku: str) -> int:
        return zlib.crc32(sku.encode()) % self.buckets

    def stock(self, location: str, sku: str) -> str:
        return f"{{{location}}}:s:{self.bucket(sku)}"

    def log(self, location: str, sku: str) -> str:
        return f"{{{location}}}:d:{self.bucket(sku)}"

    @staticmethod
    def seen(location: str) -> str:
        return f"{{{location}}}:e"

    @staticmethod
    def part(location: str, reservation_id: str) -> str:
        return f"{{{location}}}:r:{reservation_id}"

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
    def held(principal: str) -> str:
        return f"principal:{{{principal}}}:held"


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


class PickCapacity(NamedTuple):
    """A hold that takes one of the `limit` orders its location may pick on `day`."""

    limit: int
    day: str  # YYYYMMDD (UTC)
    keep_from: str  # days before this one are forgotten


class HoldCall(NamedTuple):
    keys: list[str]
    args: list[Any]
    location: str
    expires_at: int
    wakes: bool  # the script sets the location's wake-up itself (only when it holds)


@dataclass(frozen=True, slots=True)
class DirEntry:
    fingerprint: str
    lines: tuple[Line, ...]
    saga: str
    owner: str  # the principal that made it ('' on an open server)


@dataclass(frozen=True, slots=True)
class PartState:
    location: str
    state: str | None  # None: no part at this location
    expires_at: int


class Holder(NamedTuple):
    reservation_id: str
    qty: int
    held_at: int  # ms; 0 for a part held before holds recorded it


@dataclass(frozen=True, slots=True)
class EventsApplied:
    outcomes: list[EventOutcome]
    short_rows: list[tuple[str, int, int]]  # sku, on_hand, reserved


def dedupe_id(event: StockEvent) -> str:
    """What makes an event a duplicate at its location: its id, from its source. ("|" is
    no id's character, so two sources' ids never meet.)"""
    return f"{event.source}|{event.event_id}" if event.source else event.event_id


def encode_lines(lines: Iterable[Line]) -> str:
    return "".join(f"{ln.location}\t{ln.sku}\t{ln.qty}\n" for ln in lines)


def decode_lines(text: str) -> tuple[Line, ...]:
    out = []
    for row in text.splitlines():
        location, sku, qty = row.split("\t")
        out.append(Line(location, sku, int(qty)))
    return tuple(out)


def available_of(value: bytes | None) -> int:
    """A stored row's available units (StockRow.available), without decoding the rest."""
    if value is None:
        return 0
    on_hand, reserved, safety, _ = value.split(b",", 3)
    return max(0, int(on_hand) - int(reserved) - int(safety))


def parse_row(value: bytes | None) -> StockRow:
    if value is None:
        return StockRow()
    on_hand, reserved, safety, version, as_of = value.split(b",")
    return StockRow(int(on_hand), int(reserved), int(safety), int(version), int(as_of))


_REDIS_DOWN = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.SlotNotCoveredError,
    OSError,
)


Command = tuple[Any, ...]
_Queued = tuple[str, Sequence[str], Sequence[Any], Command | None, "asyncio.Future[Any]"]


class AutoPipeline:
    """Script calls made at about the same time by one process, sent together: one round
    trip and one connection for many. A call made while fewer than `max_inflight` batches
    are under way is sent at once (on the next turn of the event loop); others join the
    next batch. Each call gets its own answer or error. One batch in flight at a time made
    the most Reserves per second over gRPC (bench/RESULTS.md: +15% against four)."""

    def __init__(self, client: Any, max_batch: int = 256, max_inflight: int = 1) -> None:
        self.redis = client
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.queue: list[_Queued] = []
        self.inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Any], then: Command | None = None
    ) -> Any:
        """Runs the script; `then`, a command sent right behind it in the same batch (its
        answer is not wanted), runs after it on one Redis."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((sha, keys, args, then, future))
        if self.inflight < self.max_inflight:
            self.inflight += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def fail_queued(self, reason: str) -> None:
        """Answers every call not yet sent with a ConnectionError; they are never sent."""
        queued, self.queue = self.queue, []
        for *_, future in queued:
            if not future.done():
                future.set_exception(rexc.ConnectionError(reason))

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch = self.queue[: self.max_batch]
                del self.queue[: self.max_batch]
                # A call given up before it was sent (deadline, circuit) is not sent at all:
                # it was answered UNAVAILABLE (or its caller left), so it must change nothing.
                batch = [queued for queued in batch if not queued[-1].done()]
                if batch:
                    await self._send(batch)
        finally:
            self.inflight -= 1

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # every caller of the batch learns why
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up (deadline); the script ran or not, idempotently
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[_Queued]) -> list[Any]:
        """One pipeline for the batch; the script replies, in order."""
        pipe = self.redis.pipeline(transaction=False)
        for sha, keys, args, then, _ in batch:
            _evalsha(pipe, sha, keys, args)
            if then is not None:
                pipe.execute_command(*then)
        replies = iter(await pipe.execute(raise_on_error=False))
        results = []
        for *_, then, _future in batch:
            results.append(next(replies))
            if then is not None:
                next(replies)  # the follow-up's own reply is not wanted
        return results


class Storage:
    """Stock and reservations in Redis. Every change is one Lua script (EVALSHA)."""

    SCRIPTS = (
        "hold",
        "commit",
        "release",
        "expire",
        "extend",
        "claim",
        "settle",
        "apply_events",
        "set_safety_stock",
        "read_rows",
        "disarm",
        "budget",
    )

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        stock_buckets: int,
        retention_ms: int,
        event_window_ms: int,
        probe: aioredis.Redis | RedisCluster | None = None,
        probe_timeout: float = 0.5,
    ) -> None:
        """probe: a client of its own for `probe()` (default: `client`)."""
        # redis-py types its replies as wide unions; this seam decodes them itself.
        self.redis: Any = client
        self.probe_client: Any = probe or client
        self.probe_timeout = probe_timeout
        self.down: str | None = None  # why the circuit is open (open_circuit)
        self.cluster = isinstance(client, RedisCluster)
        self.keys = Keys(stock_buckets)
        self.retention_ms = retention_ms
        self.event_window_ms = event_window_ms
        self.scripts = {name: Script(name) for name in self.SCRIPTS}
        self.batcher = AutoPipeline(client)
        self._wide_reads = Turns(1, light=BIG_READ)
        self._load_lock = asyncio.Lock()
        self._loaded_at = 0.0

    # -- plumbing ---------------------------------------------------------------------

    async def guard(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs one Redis exchange; a cold script cache is filled and the exchange rerun.
        While the circuit is open it fails at once (`open_circuit`)."""
        if self.down is not None:
            raise Unavailable(f"redis unreachable: {self.down}")
        try:
            try:
                return await make()
            except rexc.NoScriptError:
                await self._reload_scripts()
                return await make()
        except _REDIS_DOWN as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc

    def open_circuit(self, reason: str) -> None:
        """The store is known down (engine/store/probe.py): until `close_circuit`, every call fails
        at once with Unavailable instead of waiting on a frozen socket until its deadline.
        Script calls still queued behind a batch that waits on the store are answered so
        now too; they were never sent, so they change nothing. (What was sent already waits
        for its answer, its deadline or the socket timeout: whether it ran is unknown.)"""
        self.down = reason
        self.batcher.fail_queued(f"not sent: {reason}")

    def close_circuit(self) -> None:
        self.down = None

    async def load_scripts(self) -> None:
        for script in self.scripts.values():
            await self.redis.script_load(script.source)
        self._loaded_at = time.monotonic()

    async def _reload_scripts(self) -> None:
        """After a Redis restart every call in flight meets NOSCRIPT at once: one of them
        loads the scripts, the others wait for it instead of loading them again."""
        seen = self._loaded_at
        async with self._load_lock:
            if self._loaded_at == seen:
                await self.load_scripts()

    async def probe(self) -> None:
        """Pings the store past the circuit, on the probe's own connection (so that a busy
        pool is not taken for a store that is down), within `probe_timeout` seconds."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.probe_client.ping()
        except (*_REDIS_DOWN, rexc.RedisError) as exc:
            late = isinstance(exc, TimeoutError | rexc.TimeoutError)
            why = f"no answer within {self.probe_timeout}s" if late else str(exc)
            raise Unavailable(f"redis unreachable: {why}") from exc

    async def call(
        self, name: str, keys: Sequence[str], args: Sequence[Any], then: Command | None = None
    ) -> Any:
        sha = self.scripts[name].sha
        return await self.guard(lambda: self.batcher.evalsha(sha, keys, args, then))

    async def pipeline(self, build: Callable[[Any], object]) -> list[Any]:
        """One round trip for several commands. It is run again only after NOSCRIPT, which
        only a pipeline holding a script call can meet: such pipelines hold idempotent
        commands only."""

        async def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results

        return await self.guard(run)

    def evalsha(self, pipe: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        _evalsha(pipe, self.scripts[name].sha, keys, args)

    # -- locations --------------------------------------------------------------------

    async def upsert_locations(self, locations: Sequence[Location]) -> None:
        mapping = {loc.id: orjson.dumps(_location_dict(loc)) for loc in locations}

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:  # one slot: {omnistock}
                pipe.hset(LOCATIONS, mapping=mapping)
                pipe.incr(LOCATIONS_VERSION)
                await pipe.execute()

        await self.guard(run)

    async def locations_version(self) -> int:
        return int(await self.guard(lambda: self.redis.get(LOCATIONS_VERSION)) or 0)

    async def load_locations(self, ids: Sequence[str] | None = None) -> dict[str, Location]:
        """Every location, or those of `ids` that exist."""
        if ids is None:
            raw: dict[bytes, bytes] = await self.guard(lambda: self.redis.hgetall(LOCATIONS))
            return {k.decode(): _location_from(orjson.loads(v)) for k, v in raw.items()}
        got = await self.guard(lambda: self.redis.hmget(LOCATIONS, list(ids)))
        return {i: _location_from(orjson.loads(v)) for i, v in zip(ids, got, strict=True) if v}

    # -- stock ------------------------------------------------------------------------

    async def rows(self, pairs: Sequence[tuple[str, str]]) -> list[StockRow]:
        """Stock rows of (location, sku) pairs: one read script for the rows of one hash
        slot (on one Redis: for all of them), every slot's script in one round trip.
        Decoded giving the event loop a turn every few hundred rows: a read of 20,000
        rows takes tens of milliseconds to decode."""
        async with self._wide_reads.take(len(pairs)):
            return [parse_row(v) async for v in gently(await self._read_values(pairs))]

    async def available(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """What `rows` reads, as each row's available units only (cheaper to decode)."""
        async with self._wide_reads.take(len(pairs)):
            return [available_of(v) async for v in gently(await self._read_values(pairs))]

    async def _read_values(self, pairs: Sequence[tuple[str, str]]) -> list[bytes | None]:
        by_slot: dict[int, list[int]] = {}
        for i, (location, _) in enumerate(pairs):
            by_slot.setdefault(self._slot(location), []).append(i)
        calls = []
        for idx in by_slot.values():
            keys, args = KeyList(), []
            for i in idx:
                location, sku = pairs[i]
                args += [keys.add(self.keys.stock(location, sku)), sku]
            calls.append((keys.keys, args))
        values = await asyncio.gather(*(self.call("read_rows", k, a) for k, a in calls))
        out: list[bytes | None] = [None] * len(pairs)
        for idx, got in zip(by_slot.values(), values, strict=True):
            for i, value in zip(idx, got, strict=True):
                out[i] = value
        return out

    def _slot(self, location: str) -> int:
        """The cluster hash slot of a location's keys; 0 for all of them on one Redis."""
        return key_slot(location.encode()) if self.cluster else 0

    async def apply_events(
        self, location: str, events: Sequence[StockEvent], now: int, full_count_at: int = 0
    ) -> EventsApplied:
        """full_count_at: a full count that zeroes what it does not list was taken then (see
        apply_events.lua); set before that count reads the rows it zeroes. The events go in
        order, EVENTS_PER_SCRIPT to a script, so that a long batch holds Redis for no longer
        than one of those at a time and a small call waits behind one of them at most."""
        outcomes: list[EventOutcome] = []
        short: dict[str, tuple[str, int, int]] = {}  # a row's latest state, should it be short
        for start in range(0, max(len(events), 1), EVENTS_PER_SCRIPT):
            some = events[start : start + EVENTS_PER_SCRIPT]
            part = await self._apply_some(location, some, now, full_count_at)
            outcomes += part.outcomes
            for ev, outcome in zip(some, part.outcomes, strict=True):
                if outcome is EventOutcome.APPLIED:  # its row is reported if short
                    short.pop(ev.sku, None)
            short.update((row[0], row) for row in part.short_rows)
        return EventsApplied(outcomes, list(short.values()))

    async def _apply_some(
        self, location: str, events: Sequence[StockEvent], now: int, full_count_at: int
    ) -> EventsApplied:
        keys = KeyList(Keys.seen(location), Keys.full_count(location))
        args: list[Any] = [now, self.event_window_ms, len(events), full_count_at]
        for ev in events:
            part = keys.add(Keys.part(location, ev.reservation_id)) if ev.reservation_id else 0
            stock = keys.add(self.keys.stock(location, ev.sku))
            log = keys.add(self.keys.log(location, ev.sku))
            args += [dedupe_id(ev), ev.kind.value, ev.sku, ev.qty, ev.source_time, stock, log, part]
        outcomes, short = await self.call("apply_events", keys.keys, args)
        return EventsApplied(
            [EventOutcome(o.decode()) for o in outcomes],
            [
                (short[i].decode(), int(short[i + 1]), int(short[i + 2]))
                for i in range(0, len(short), 3)
            ],
        )

    async def rows_at(self, location: str) -> dict[str, StockRow]:
        """Every stock row of one location: each bucket read whole, in one round trip."""
        buckets = [f"{{{location}}}:s:{b}" for b in range(self.keys.buckets)]
        got = await self.pipeline(lambda pipe: [pipe.hgetall(k) for k in buckets])
        return {sku.decode(): parse_row(v) for bucket in got for sku, v in bucket.items()}

    async def holders(self, location: str, skus: Iterable[str]) -> dict[str, list[Holder]]:
        """The HELD reservation parts at a location that hold each of `skus`, oldest hold
        first. It reads every HELD part there: meant for the rare row left short."""
        wanted = set(skus)
        ids = [
            i.decode()
            for i in await self.guard(lambda: self.redis.zrange(Keys.due(location), 0, -1))
        ]
        if not ids:
            return {}
        parts = await self.pipeline(
            lambda pipe: [pipe.hmget(Keys.part(location, i), "s", "l", "t") for i in ids]
        )
        out: dict[str, list[Holder]] = {}
        for rid, (state, lines, held_at) in zip(ids, parts, strict=True):
            if state != b"HELD":
                continue
            for row in (lines or b"").decode().splitlines():
                sku, qty = row.split("\t")
                if sku in wanted:
                    out.setdefault(sku, []).append(Holder(rid, int(qty), int(held_at or 0)))
        for held in out.values():
            held.sort(key=lambda h: (h.held_at, h.reservation_id))
        return out

    async def publish_shortages(self, events: Sequence[dict[str, str]]) -> None:
        """Appends shortage events to the shortage stream, trimmed to about SHORTAGES_KEPT."""
        await self.pipeline(
            lambda pipe: [
                pipe.xadd(SHORTAGES, dict(e), maxlen=SHORTAGES_KEPT, approximate=True)
                for e in events
            ]
        )

    # -- id mappings ------------------------------------------------------------------

    async def mappings_version(self) -> int:
        return int(await self.guard(lambda: self.redis.get(MAPPINGS_VERSION)) or 0)

    async def mapping(self, source: str) -> dict[str, str]:
        got = await self.guard(lambda: self.redis.hgetall(Keys.mapping(source)))
        return {k.decode(): v.decode() for k, v in got.items()}

    async def set_mappings(self, changes: Sequence[tuple[str, str, str]]) -> None:
        """(source, field, id) each: set, or removed where id is ""; the version moves."""

        def build(pipe: Any) -> None:
            for source, name, value in changes:
                if value:
                    pipe.hset(Keys.mapping(source), name, value)
                else:
                    pipe.hdel(Keys.mapping(source), name)
            pipe.incr(MAPPINGS_VERSION)

        await self.pipeline(build)

    async def set_safety_stock(self, location: str, items: Sequence[tuple[str, int]]) -> int:
        keys = KeyList()
        args: list[Any] = [len(items)]
        for sku, qty in items:
            args += [sku, qty, keys.add(self.keys.stock(location, sku))]
        return int(await self.call("set_safety_stock", keys.keys, args))

    # -- reservation parts ------------------------------------------------------------

    def _line_keys(self, keys: KeyList, location: str, skus: Iterable[str]) -> list[Any]:
        """(sku, stock key index, change log key index) for each sku, the keys added."""
        args: list[Any] = []
        for sku in skus:
            stock = keys.add(self.keys.stock(location, sku))
            args += [sku, stock, keys.add(self.keys.log(location, sku))]
        return args

    def hold_call(
        self,
        reservation_id: str,
        fp: str,
        location: str,
        lines: Sequence[Line],
        now: int,
        expires_at: int,
        directory_lines: str | None,
        capacity: PickCapacity | None = None,
        owner: str = "",
    ) -> HoldCall:
        """A hold script call; with directory_lines it also writes the directory (on one
        Redis only: on a cluster the directory is in another slot); with capacity it takes
        one order of the location's daily pick capacity, or answers FULL."""
        keys = KeyList(Keys.part(location, reservation_id), Keys.due(location))
        triples: list[Any] = []
        for line in lines:
            triples += [line.sku, line.qty, keys.add(self.keys.stock(location, line.sku))]
        cap: list[Any] = [0, 0, "", ""]
        if capacity is not None:
            cap = [keys.add(Keys.capacity(location)), *capacity]
        with_dir = directory_lines is not None
        if with_dir:  # last: hold.lua reads them as KEYS[#KEYS-1] and KEYS[#KEYS]
            keys.add(WAKE)
            keys.add(Keys.directory(reservation_id))
        args = [reservation_id, fp, now, expires_at, self.retention_ms]
        args += ["1" if with_dir else "0", directory_lines or "", len(lines), *triples, *cap]
        return HoldCall(keys.keys, [*args, location, owner], location, expires_at, with_dir)

    async def hold(self, calls: Sequence[HoldCall]) -> list[HoldReply]:
        """Holds parts at one or more locations; the auto-pipeline sends them together.
        Right behind each hold goes the wake-up of its location's sweep (see wake), unless
        the script sets it itself."""

        def one(c: HoldCall) -> Awaitable[Any]:
            then = None if c.wakes else _wake_at(c.location, c.expires_at)
            return self.call("hold", c.keys, c.args, then=then)

        if len(calls) == 1:  # the common case: no task for gather to make
            return [hold_reply(await one(calls[0]))]
        return [hold_reply(answer) for answer in await asyncio.gather(*map(one, calls))]

    async def commit_part(
        self,
        reservation_id: str,
        location: str,
        skus: Iterable[str],
        now: int,
        force: bool,
        owner: str = "",
    ) -> PartReply:
        """owner: the principal whose held units this part stops counting (see budget)."""
        keys = KeyList(Keys.part(location, reservation_id), Keys.due(location))
        triples = self._line_keys(keys, location, skus)
        args = [reservation_id, now, self.retention_ms, "1" if force else "0", len(triples) // 3]
        then = _unbudget(owner, reservation_id)
        return part_reply(await self.call("commit", keys.keys, [*args, *triples], then))

    async def release_part(
        self,
        reservation_id: str,
        location: str,
        skus: Iterable[str],
        mode: ReleaseMode,
        owner: str = "",
    ) -> PartReply:
        keys = KeyList(
            Keys.part(location, reservation_id), Keys.due(location), Keys.capacity(location)
        )
        triples = self._line_keys(keys, location, skus)
        args = [reservation_id, self.retention_ms, mode, len(triples) // 3, *triples]
        then = _unbudget(owner, reservation_id)
        return part_reply(await self.call("release", keys.keys, args, then))

    async def budget(
        self, principal: str, reservation_id: str, units: int, now: int, expires_at: int, cap: int
    ) -> int | None:
        """Counts a hold against the units `principal` may hold at once (budget.lua): None
        when it fits (or was counted before), else the units it holds already."""
        args = [now, reservation_id, units, expires_at, cap]
        answer = _decode(await self.call("budget", [Keys.held(principal)], args))
        return None if answer[0] == "OK" else int(answer[1])

    async def unbudget(self, principal: str, reservation_id: str) -> None:
        await self.guard(lambda: self.redis.hdel(Keys.held(principal), reservation_id))

    async def extend_part(
        self, reservation_id: str, location: str, now: int, expires_at: int, pin: bool
    ) -> PartReply:
        """Moves a part's expiry; once it has moved, the location's wake-up follows it (an
        earlier expiry must wake the sweep earlier) and the directory is kept at least as
        long (PEXPIRE GT), in a second round trip, so that a refused extend writes nothing."""
        keys = [Keys.part(location, reservation_id), Keys.due(location)]
        args = [reservation_id, now, expires_at, "pin" if pin else "set"]
        answer = part_reply(await self.call("extend", keys, args))
        if answer.reply is Reply.HELD:
            directory_ttl = answer.expires_at - now + self.retention_ms

            def build(pipe: Any) -> None:
                pipe.execute_command(*_wake_at(location, answer.expires_at))
                pipe.pexpire(Keys.directory(reservation_id), directory_ttl, gt=True)

            await self.pipeline(build)
        return answer

    async def parts(self, reservation_id: str, locations: Iterable[str]) -> list[PartState]:
        locs = list(locations)

        def build(pipe: Any) -> None:
            for location in locs:
                pipe.hmget(Keys.part(location, reservation_id), ["s", "x"])

        results = await self.pipeline(build)
        return [
            PartState(loc, s.decode() if s else None, int(x) if x else 0)
            for loc, (s, x) in zip(locs, results, strict=True)
        ]

    # -- the directory and sagas ------------------------------------------------------

    async def directory(self, reservation_id: str) -> DirEntry | None:
        key = Keys.directory(reservation_id)
        f, lines, g, o = await self.guard(lambda: self.redis.hmget(key, ["f", "l", "g", "o"]))
        if f is None:
            return None
        text = (g or b"").decode(), (o or b"").decode()
        return DirEntry(f.decode(), decode_lines(lines.decode()), *text)

    async def claim(
        self,
        reservation_id: str,
        fp: str,
        lines: str,
        owner: str,
        ttl_ms: int,
        recover_at: int,
        made_by: str = "",
    ) -> ClaimReply:
        """Opens a saga: the sagas index entry and the directory entry, in one round trip.
        The index entry goes first (a crash after it leaves recovery a trace), and only if
        the id has none (NX: a retry never postpones the recovery of an earlier attempt);
        a claim refused (CONFLICT, or the id's saga under way) takes back the entry it
        added, so a refused call leaves nothing behind."""

        def build(pipe: Any) -> None:
            pipe.zadd(SAGAS, {reservation_id: recover_at}, nx=True)
            args = [fp, lines, owner, ttl_ms, made_by]
            self.evalsha(pipe, "claim", [Keys.directory(reservation_id)], args)

        added, answer = await self.pipeline(build)
        claimed = claim_reply(answer)
        if claimed.reply is not Claim.NEW and added:
            await self.unschedule_saga(reservation_id)
        return claimed

    async def settle(self, reservation_id: str, expected: str, new: str, ttl_ms: int = 0) -> bool:
        args = [expected, new, ttl_ms]
        return bool(await self.call("settle", [Keys.directory(reservation_id)], args))

    async def schedule_saga(self, reservation_id: str, recover_at: int) -> None:
        await self.guard(lambda: self.redis.zadd(SAGAS, {reservation_id: recover_at}))

    async def unschedule_saga(self, reservation_id: str) -> None:
        await self.guard(lambda: self.redis.zrem(SAGAS, reservation_id))

    async def sagas_due(self, now: int, limit: int) -> list[str]:
        ids = await self.guard(
            lambda: self.redis.zrangebyscore(SAGAS, "-inf", now, start=0, num=limit)
        )
        return [i.decode() for i in ids]

    async def drop_directory(self, reservation_id: str, fp: str) -> None:
        """Forgets a reservation that never took effect (every part rolled back)."""
        key = Keys.directory(reservation_id)

        async def run() -> None:
            if await self.redis.hget(key, "f") == fp.encode():
                await self.redis.delete(key)

        await self.guard(run)

    # -- expiry -----------------------------------------------------------------------

    # The sweep does not read every location's expiry index on every pass: the wake-up index
    # says which locations may have a hold due. Each hold, and each extend, is followed in
    # the same batch by ZADD LT of its location at its expiry; the sweeper, after expiring
    # what was due at a location, takes the location off (disarm: only if no hold lowered
    # its time meanwhile), reads its earliest remaining expiry, and puts it back at that
    # time (ZADD LT). On one Redis a hold's ZADD runs after its script, which closes every
    # race with the sweeper; on a cluster, or after a client died between the two, the
    # sweeper's scan of every location every `full_scan` seconds (sweeper.py) is the net.

    async def woken(self, now: int, limit: int) -> dict[str, int]:
        """Locations whose wake-up time has come, with that time."""
        got = await self.guard(
            lambda: self.redis.zrangebyscore(WAKE, "-inf", now, start=0, num=limit, withscores=True)
        )
        return {member.decode(): int(score) for member, score in got}

    async def rearm(self, woken: dict[str, int | None]) -> None:
        """After a sweep of these locations: each goes back on the wake-up index at its
        earliest remaining expiry, if it has one. None: not taken off first (a full scan)."""
        seen = [x for loc, at in woken.items() if at is not None for x in (loc, at)]
        if seen:
            await self.call("disarm", [WAKE], seen)
        locations = list(woken)

        def build(pipe: Any) -> None:
            for location in locations:
                pipe.zrange(Keys.due(location), 0, 0, withscores=True)

        earliest = {
            location: int(first[0][1])
            for location, first in zip(locations, await self.pipeline(build), strict=True)
            if first
        }
        if earliest:
            await self.guard(lambda: self.redis.zadd(WAKE, earliest, lt=True))

    async def capacity_used(self, locations: Sequence[str], day: str) -> list[int]:
        """Ship-from-store orders held or picked on `day` at each location: one round trip."""
        if not locations:
            return []

        def build(pipe: Any) -> None:
            for location in locations:
                pipe.hget(Keys.capacity(location), day)

        return [int(v or 0) for v in await self.pipeline(build)]

    async def due(self, locations: Sequence[str], now: int, limit: int) -> dict[str, list[str]]:
        """Reservation ids of HELD parts past their expiry, by location, earliest first:
        one read of each location's expiry index, all in one round trip (one per node)."""
        if not locations:
            return {}

        def build(pipe: Any) -> None:
            for location in locations:
                pipe.zrangebyscore(Keys.due(location), "-inf", now, start=0, num=limit)

        got = await self.pipeline(build)
        return {
            location: [rid.decode() for rid in rids]
            for location, rids in zip(locations, got, strict=True)
            if rids
        }

    async def expire(self, location: str, reservation_ids: Sequence[str], now: int) -> int:
        """Expires those of the parts at one location that are due; answers how many."""

        def build(pipe: Any) -> None:
            for rid in reservation_ids:
                pipe.hget(Keys.part(location, rid), "l")

        lines = await self.pipeline(build)
        skus = {row.split(b"\t")[0].decode() for text in lines if text for row in text.splitlines()}
        keys = KeyList(
            Keys.due(location),
            Keys.capacity(location),
            *(Keys.part(location, rid) for rid in reservation_ids),
        )
        triples = self._line_keys(keys, location, sorted(skus))
        args = [now, self.retention_ms, len(reservation_ids), *reservation_ids, len(skus), *triples]
        return int(await self.call("expire", keys.keys, args))


def _wake_at(location: str, at: int) -> Command:
    """Makes the sweep look at `location` at `at` at the latest (never later than before)."""
    return ("ZADD", WAKE, "LT", at, location)


def _unbudget(owner: str, reservation_id: str) -> Command | None:
    """Sent behind a commit or release: the part's units no longer count against its
    owner's held units (a no-op for an owner that has none counted)."""
    return ("HDEL", Keys.held(owner), reservation_id) if owner else None


def _evalsha(pipe: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queues one script call. (redis-py's cluster pipeline blocks its `evalsha` method, yet
    routes the command itself by its keys, all of one slot here.)"""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def _decode(value: Any) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in value]


def _location_dict(loc: Location) -> dict[str, Any]:
    return {
        "id": loc.id,
        "name": loc.name,
        "type": loc.type.value,
        "lat": loc.latitude,
        "lon": loc.longitude,
        "pickup": loc.pickup_enabled,
        "ship": loc.ship_enabled,
        "cap": loc.ship_capacity,
        "prio": loc.priority,
        "active": loc.active,
    }


def _location_from(d: dict[str, Any]) -> Location:
    return Location(
        id=d["id"],
        name=d["name"],
        type=LocationType(d["type"]),
        latitude=d["lat"],
        longitude=d["lon"],
        pickup_enabled=d["pickup"],
        ship_enabled=d["ship"],
        ship_capacity=d["cap"],
        priority=d["prio"],
        active=d["active"],
    )
