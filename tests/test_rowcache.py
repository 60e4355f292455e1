"""The read cache (engine/store/rowcache.py) against real stores: its rows agree with Redis
after any interleaving of writes, through this process and through another; a write made
through this process is seen by the next read here; a gap in the feed (the subscription's
connection killed, the store restarted, the store flushed) makes reads go to Redis and be
right; versions never go backwards; the memory bound holds. No test waits for a time: each
waits for the cache to have heard back from Redis (`caught_up`), however long that takes."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio.cluster import RedisCluster

from engine.domain.model import EventKind, StockEvent, StockRow
from engine.domain.rules import ChannelRule
from engine.metrics import Metrics
from engine.store.cachelink import node_of
from engine.store.connect import connect
from engine.store.embedded import EmbeddedRedis
from engine.store.keys import Keys
from engine.store.rowcache import RowCache
from engine.store.storage import Storage

from .conftest import BUCKETS, HOUR_MS, ON_BOTH

T = TypeVar("T")
Pair = tuple[str, str]
LOCATIONS = ("s1", "s2", "s3")  # on every node of the test cluster (test_cluster.py)
SKUS = ("a", "b", "c")
PAIRS = [(loc, sku) for loc in LOCATIONS for sku in SKUS]
NOW = 1_700_000_000_000
_ids = itertools.count()


def storage_on(client: aioredis.Redis | RedisCluster) -> Storage:
    return Storage(client, stock_buckets=BUCKETS, retention_ms=HOUR_MS, event_window_ms=HOUR_MS)


async def cache_on(storage: Storage, max_rows: int = 10_000, max_lag: float = 0.2) -> RowCache:
    cache = RowCache(storage, Metrics(), max_rows=max_rows, max_lag=max_lag)
    storage.told = (cache.wrote,)
    await cache.start()
    return cache


async def change(storage: Storage, location: str, sku: str, qty: int, count: bool = False) -> None:
    """A stock event at a row: a COUNT of qty, or a DELTA of qty."""
    kind = EventKind.COUNT if count else EventKind.DELTA
    event = StockEvent(f"e{next(_ids)}", location, sku, kind, qty, NOW + next(_ids))
    await storage.apply_events(location, [event], NOW + next(_ids) + 1000)


async def in_redis(storage: Storage, pairs: Sequence[Pair]) -> list[StockRow]:
    return await storage.rows(pairs)


async def warm(cache: RowCache, pairs: Sequence[Pair]) -> None:
    """Reads until every pair is kept by the cache (subscribed, confirmed, filled)."""
    for _ in range(200):
        await cache.rows(pairs)
        if all(cache.kept(loc, sku) is not None for loc, sku in pairs):
            return
        await cache.caught_up()
        await asyncio.sleep(0.05)  # a node dropped after a gap is left alone for a while
    raise AssertionError(f"not all of {pairs} kept: {cache.locations.keys()}")


def hits(cache: RowCache) -> float:
    return cache.metrics.read_cache_reads.labels("hit")._value.get()


def fallbacks(cache: RowCache) -> float:
    return cache.metrics.read_cache_reads.labels("fallback")._value.get()


@pytest.fixture
async def cache(storage: Storage) -> AsyncIterator[RowCache]:
    made = await cache_on(storage)
    yield made
    await made.close()


async def kill_subscribers(redis: Any) -> None:
    """Cuts every pub/sub connection (on a cluster: on every node), as a network would."""
    if isinstance(redis, RedisCluster):
        for node in redis.get_primaries():
            await node.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    else:
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")


# -- one process's own writes ----------------------------------------------------------------


@ON_BOTH
async def test_a_write_through_this_process_is_seen_by_its_next_read(
    storage: Storage, cache: RowCache
) -> None:
    # given rows the cache keeps
    for loc, sku in PAIRS:
        await change(storage, loc, sku, 10, count=True)
    await warm(cache, PAIRS)
    served = hits(cache)
    for n, (loc, sku) in enumerate(PAIRS * 2):
        # when this process writes a row, then at once reads every row
        await change(storage, loc, sku, -1)
        got = await cache.rows(PAIRS)
        # then the read is Redis's, exactly, own write included
        assert got == await in_redis(storage, PAIRS), f"after write {n} at {(loc, sku)}"
    await cache.caught_up()
    assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    assert hits(cache) > served  # and it was the cache that answered, once caught up


class HeldReplies:
    """Holds back what the cache's connection to `location`'s node reads, one reply at a
    time: the bytes wait, as they do when the event loop is slow to get to them, while the
    store and the other connections go on. It also sees what that connection sends."""

    def __init__(self, cache: RowCache, location: str) -> None:
        node = node_of(cache.storage, location)
        assert node is not None
        self.storage = cache.storage
        self.link = cache.links[node]
        self.state = cache.locations[location]
        self.pinged_at = -math.inf  # when the newest PING sent was on the wire
        self._turns = asyncio.Semaphore(0)
        self._passed = asyncio.Event()  # a reply held was let through
        self._pinged = asyncio.Event()
        conn = self.link.conn
        read, send = conn.read_response, conn.send_packed_command

        async def held(*args: Any, **kwargs: Any) -> Any:
            reply = await read(*args, **kwargs)
            await self._turns.acquire()
            self._passed.set()
            return reply

        async def seen(commands: Any, *args: Any, **kwargs: Any) -> None:
            await send(commands, *args, **kwargs)
            if b"PING" in b"".join(commands):
                self.pinged_at = time.monotonic()
                self._pinged.set()

        conn.read_response, conn.send_packed_command = held, seen

    async def ping_sent_after_own_write(self) -> None:
        """Waits until the PING asked by this process's last write is on the wire, then
        for a round trip of another connection to its node: Redis has run that PING then."""
        while self.pinged_at <= self.state.written_at:
            self._pinged.clear()
            await self._pinged.wait()
        await in_redis(self.storage, [(self.state.name, "a")])

    async def until_own_write_vouched_for(self) -> None:
        """Lets replies through one by one until the PONG of the PING sent after this
        process's last write is read (those after it stay held)."""
        while self.link.fresh_at <= self.state.written_at:
            self._passed.clear()
            self._turns.release()
            await self._passed.wait()  # and read by the link in the same step


async def read_one(cache: RowCache, pair: Pair, by_channel: bool) -> StockRow:
    """A row as GetAvailability reads it: alone, or with what a channel may hold of it."""
    if by_channel:
        rows, _ = await cache.offers("web", {pair[0]: ChannelRule(buffer=1)}, [pair])
        return rows[0]
    return (await cache.rows([pair]))[0]


@ON_BOTH
@pytest.mark.parametrize("by_channel", [False, True], ids=["rows", "offers"])
async def test_a_read_is_never_older_than_one_read_before_it_from_redis(
    storage: Storage, other: Storage, cache: RowCache, by_channel: bool
) -> None:
    # given a row the cache keeps, and its feed's replies held back from here on
    pair = ("s1", "a")
    await change(other, *pair, 10, count=True)
    await warm(cache, [pair])
    await read_one(cache, pair, by_channel)  # its channels kept too
    held = HeldReplies(cache, "s1")
    # when this process writes it (its next reads there wait for a PING sent after that),
    # Redis runs that PING, and then another process writes the row
    await change(storage, *pair, -1)
    await held.ping_sent_after_own_write()
    await change(other, *pair, -1)
    # then a read now, which the cache cannot vouch for, is Redis's newest
    first = await read_one(cache, pair, by_channel)
    assert first == (await in_redis(storage, [pair]))[0]
    # and once the PING's answer is read (the other write's message, after it, still held),
    # the next read, served by the cache, is not older than that one
    await held.until_own_write_vouched_for()
    served = hits(cache)
    then = await read_one(cache, pair, by_channel)
    assert then.version >= first.version, f"read {first}, then {then}"
    assert hits(cache) == served + 1


@ON_BOTH
async def test_once_caught_up_the_cache_has_every_write_of_another_process(
    storage: Storage, other: Storage, cache: RowCache
) -> None:
    # given rows the cache keeps
    for loc, sku in PAIRS:
        await change(other, loc, sku, 10, count=True)
    await warm(cache, PAIRS)
    # when another process writes every row, twice
    for loc, sku in PAIRS * 2:
        await change(other, loc, sku, -1)
    # then once the cache has heard back from Redis, it answers what Redis holds, from itself
    await cache.caught_up()
    served = hits(cache)
    got = await cache.rows(PAIRS)
    assert got == await in_redis(storage, PAIRS)
    assert hits(cache) == served + len(PAIRS)
    assert {row.on_hand for row in got} == {8}


# -- random interleavings --------------------------------------------------------------------


class TwoProcesses(RuleBasedStateMachine):
    """A flushed store written through this process (`ours`, with its read `cache`) and
    through another (`theirs`), and a feed that may be cut at any step; the other rules
    are the subclass's."""

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = self.run(connect(redis_url, 2.0))
        self.theirs_client = self.run(connect(redis_url, 2.0))
        self.run(self.redis.flushall())
        self.ours = storage_on(self.redis)
        self.theirs = storage_on(self.theirs_client)
        self.run(self.ours.load_scripts())
        self.cache = self.run(cache_on(self.ours))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.cache.close())
        self.run(self.redis.aclose())
        self.run(self.theirs_client.aclose())
        self.loop.close()

    @rule()
    def cut_the_feed(self) -> None:
        self.run(kill_subscribers(self.redis))

    @invariant()
    def within_its_bound(self) -> None:
        assert self.cache.cached <= self.cache.max_rows


class CacheMachine(TwoProcesses):
    """Writes through this process and through another, cached reads, catch-ups and cut
    feeds, in any order. After every read: each row read is one Redis held at some time
    since this process last knew better (its own last write, or its last catch-up), and
    no row's version goes backwards from one read to the next."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(redis_url)
        self.history: dict[Pair, list[StockRow]] = {p: [StockRow()] for p in PAIRS}
        self.floor: dict[Pair, int] = dict.fromkeys(PAIRS, 0)  # the oldest history allowed
        self.seen: dict[Pair, int] = dict.fromkeys(PAIRS, 0)  # versions read last

    def _record(self, pair: Pair) -> None:
        (row,) = self.run(in_redis(self.ours, [pair]))
        self.history[pair].append(row)

    @initialize()
    def subscribe_all(self) -> None:
        self.run(self.cache.rows(PAIRS))

    @rule(pair=st.sampled_from(PAIRS), qty=st.integers(-3, 3), count=st.booleans())
    def write_here(self, pair: Pair, qty: int, count: bool) -> None:
        self.run(change(self.ours, *pair, abs(qty) if count else qty, count))
        self._record(pair)
        self.floor[pair] = len(self.history[pair]) - 1  # this process knows of its own write

    @rule(pair=st.sampled_from(PAIRS), qty=st.integers(-3, 3), count=st.booleans())
    def write_elsewhere(self, pair: Pair, qty: int, count: bool) -> None:
        self.run(change(self.theirs, *pair, abs(qty) if count else qty, count))
        self._record(pair)

    @rule(pairs=st.lists(st.sampled_from(PAIRS), min_size=1, max_size=5, unique=True))
    def read(self, pairs: list[Pair]) -> None:
        got = self.run(self.cache.rows(pairs))
        for pair, row in zip(pairs, got, strict=True):
            allowed = self.history[pair][self.floor[pair] :]
            assert row in allowed, f"{pair}: read {row}, Redis held {allowed} since"
            assert row.version >= self.seen[pair], f"{pair}: version went back"
            self.seen[pair] = row.version

    @rule()
    def catch_up(self) -> None:
        self.run(self.cache.caught_up())
        self.floor = {pair: len(rows) - 1 for pair, rows in self.history.items()}


@ON_BOTH
def test_cached_reads_agree_with_redis_after_any_interleaving(redis_url: str) -> None:
    run_state_machine_as_test(
        lambda: CacheMachine(redis_url),
        settings=settings(max_examples=25, stateful_step_count=40, deadline=None),
    )


@ON_BOTH
async def test_versions_never_go_backwards_under_concurrent_writers_and_readers(
    storage: Storage, other: Storage, cache: RowCache
) -> None:
    # given rows the cache keeps
    for loc, sku in PAIRS:
        await change(other, loc, sku, 1000, count=True)
    await warm(cache, PAIRS)

    async def writer(who: Storage, seed: int) -> None:
        for n in range(60):
            loc, sku = PAIRS[(seed * 7 + n) % len(PAIRS)]
            await change(who, loc, sku, -1)

    async def reader() -> None:
        seen: dict[Pair, int] = {}
        for _ in range(120):
            for pair, row in zip(PAIRS, await cache.rows(PAIRS), strict=True):
                assert row.version >= seen.get(pair, 0), f"{pair} went back"
                seen[pair] = row.version
            await asyncio.sleep(0)

    # when two processes write while four readers read, all at once (a task group: one
    # that fails stops the others, none left to run on against closed clients)
    async with asyncio.TaskGroup() as group:
        group.create_task(writer(storage, 1))
        group.create_task(writer(other, 2))
        for _ in range(4):
            group.create_task(reader())
    # then no reader saw a version go back
    # and once caught up the cache holds exactly what Redis holds
    await cache.caught_up()
    assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    assert hits(cache) > 0


# -- gaps ----------------------------------------------------------------------------------


@ON_BOTH
async def test_a_read_during_a_cut_feed_goes_to_redis_and_is_right(
    redis: Any, storage: Storage, other: Storage, cache: RowCache
) -> None:
    # given rows the cache keeps
    for loc, sku in PAIRS:
        await change(other, loc, sku, 10, count=True)
    await warm(cache, PAIRS)
    resyncs = cache.metrics.read_cache_resyncs.labels("gap")
    # when the feed's connection is cut, and this process writes
    await kill_subscribers(redis)
    await change(storage, "s1", "a", -4)
    # then its next read is right: the cache cannot vouch for s1, so Redis answers
    before = fallbacks(cache)
    assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    assert fallbacks(cache) > before
    # when another process writes during the gap
    await change(other, "s2", "b", -3)
    await cache.caught_up()  # the cut connection is found and dropped
    # then the rows read are Redis's, and every location was dropped, to be synced again
    assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    assert resyncs._value.get() >= len(LOCATIONS)
    # and once synced again, the cache serves the rows itself and follows the writes
    await warm(cache, PAIRS)
    await change(other, "s3", "c", -2)
    await cache.caught_up()
    served = hits(cache)
    assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    assert hits(cache) == served + len(PAIRS)


async def test_a_store_restarted_under_the_cache_is_read_again(tmp_path: Path) -> None:
    # given a cache over a private store, keeping rows
    store = EmbeddedRedis(tmp_path / "redis")
    await asyncio.to_thread(store.start)
    client = await connect(store.url, 2.0)
    storage = storage_on(client)
    await storage.load_scripts()
    cache = await cache_on(storage)
    try:
        for loc, sku in PAIRS:
            await change(storage, loc, sku, 10, count=True)
        await warm(cache, PAIRS)
        # when the store is stopped and started again (same data), and a row changes
        await asyncio.to_thread(store.stop)
        await asyncio.to_thread(store.start)
        await storage.load_scripts()
        await change(storage, "s2", "a", 5, count=True)
        await cache.caught_up()
        # then the reads are Redis's
        assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
        assert cache.metrics.read_cache_resyncs.labels("gap")._value.get() >= len(LOCATIONS)
        # and once synced again, served by the cache
        await warm(cache, PAIRS)
        await cache.caught_up()
        assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    finally:
        await cache.close()
        await client.aclose()
        await asyncio.to_thread(store.stop)


@ON_BOTH
async def test_a_flushed_store_is_found_by_its_epoch_and_read_again(
    redis: Any, storage: Storage, other: Storage, cache: RowCache
) -> None:
    # given rows the cache keeps, at versions above 1
    for loc, sku in PAIRS:
        await change(other, loc, sku, 10, count=True)
        await change(other, loc, sku, -1)
    await warm(cache, PAIRS)
    await cache.check_epoch()
    # when the store is flushed (no row message says so) and a row is written again
    await redis.flushall()
    await change(other, "s1", "a", 7, count=True)  # its version starts again at 1
    # then the epoch key is found gone, every location dropped, and reads are Redis's
    await cache.check_epoch()
    assert cache.metrics.read_cache_resyncs.labels("flush")._value.get() == len(LOCATIONS)
    assert await cache.rows(PAIRS) == await in_redis(storage, PAIRS)
    await warm(cache, PAIRS)
    (row,) = await in_redis(storage, [("s1", "a")])
    assert (cache.kept("s1", "a"), row.on_hand, row.version) == (row, 7, 1)


# -- the bound -------------------------------------------------------------------------------


async def test_the_cache_keeps_no_more_rows_than_its_bound_and_unsubscribes_what_it_drops(
    redis: aioredis.Redis, storage: Storage
) -> None:
    # given a cache of at most 4 rows
    cache = await cache_on(storage, max_rows=4)
    locations = [f"m{i}" for i in range(4)]
    try:
        for loc in locations:
            # when 3 rows of each of 4 locations are read in turn
            pairs = [(loc, sku) for sku in SKUS]
            await change(storage, loc, "a", 5, count=True)
            await warm(cache, pairs)
            # then it never keeps more than 4
            assert cache.cached <= 4
        assert cache.metrics.read_cache_evictions._value.get() >= 3
        # and the locations it dropped are unsubscribed; the last one read is kept
        await cache.caught_up()
        subscribed = await redis.execute_command(
            "PUBSUB", "SHARDNUMSUB", *(Keys.changes(loc) for loc in locations)
        )
        counts = dict(zip(subscribed[::2], subscribed[1::2], strict=True))
        assert [counts[Keys.changes(loc).encode()] for loc in locations] == [0, 0, 0, 1]
        assert [cache.kept(locations[-1], sku) is not None for sku in SKUS] == [True] * 3
        # and what it reads is still right
        pairs = [(loc, sku) for loc in locations for sku in SKUS]
        assert await cache.rows(pairs) == await in_redis(storage, pairs)
    finally:
        await cache.close()
