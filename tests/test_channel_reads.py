"""What a sales channel may hold of a row, read (issue 16): the reads work it out in Python
(engine/domain/rules.py: channel_offer) from the row, its pools and what the channels hold,
read together by one script or kept by the read cache from the rows' change messages; the
holds check it in Lua (channel_available in engine/store/lua/_prelude.lua). The two agree on
any row, pools, counts and rule; the cache's answers are ones Redis held since this process
last knew better, whatever holds, releases, pools and counts come through any process; and
once warm, a channel listing is answered without a round trip."""

from __future__ import annotations

import asyncio
import gc
import importlib.resources
import itertools
from typing import TypeVar

import hypothesis.strategies as st
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis.stateful import (
    initialize,
    rule,
    run_state_machine_as_test,
)

from engine.domain.model import Line, StockRow
from engine.domain.rules import ChannelRule, Pool
from engine.store.codecs import ChannelHold
from engine.store.connect import connect
from engine.store.keys import Keys
from engine.store.replies import ReleaseMode, Reply
from engine.store.rowcache import RowCache
from engine.store.storage import Storage

from .conftest import ON_BOTH
from .test_rowcache import (
    PAIRS,
    TwoProcesses,
    cache_on,
    change,
    hits,
    storage_on,
)

T = TypeVar("T")
Pair = tuple[str, str]
CHANNELS = ("web", "app", "mkt")
RULES = {  # one rule a channel, at every location
    "web": ChannelRule(buffer=2),
    "app": ChannelRule(),
    "mkt": ChannelRule(buffer=1, max_share=0.4),
}
HOUR_MS = 3_600_000
_ids = itertools.count()

_LUA = (
    (importlib.resources.files("engine.store") / "lua" / "_prelude.lua").read_text()
    + """
local r = read_row(KEYS[3], ARGV[1])
return channel_available(r, KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]),
  tonumber(ARGV[4]))
"""
)


def rules_at(channel: str) -> dict[str, ChannelRule]:
    return {loc: RULES[channel] for loc, _ in PAIRS}


async def hold_script_says(
    redis: aioredis.Redis, storage: Storage, sku: str, channel: str, rule: ChannelRule
) -> int:
    keys = [Keys.channel_holds("s1"), Keys.pools("s1"), storage.keys.stock("s1", sku)]
    return int(await redis.eval(_LUA, 3, *keys, sku, channel, rule.buffer, rule.share_ppm))


counts = st.integers(0, 40)
shares = st.one_of(st.none(), st.integers(1, 1_000_000).map(lambda ppm: ppm / 1_000_000))


@given(
    on_hand=st.integers(-5, 60),
    reserved=counts,
    safety=st.integers(0, 10),
    pools=st.dictionaries(st.sampled_from(CHANNELS), st.tuples(counts, st.booleans())),
    held=st.dictionaries(st.sampled_from(CHANNELS), counts),
    channel=st.sampled_from((*CHANNELS, "other")),
    buffer=st.integers(0, 8),
    share=shares,
)
@settings(max_examples=300, deadline=None)
def test_the_reads_formula_is_the_hold_scripts(
    one_redis_url: str,
    on_hand: int,
    reserved: int,
    safety: int,
    pools: dict[str, tuple[int, bool]],
    held: dict[str, int],
    channel: str,
    buffer: int,
    share: float | None,
) -> None:
    rule = ChannelRule(buffer, share)

    async def check() -> None:
        redis = await connect(one_redis_url, 2.0)
        try:
            await redis.flushall()
            storage = storage_on(redis)
            await storage.load_scripts()
            row = f"{on_hand},{reserved},{safety},1,0"
            await redis.hset(storage.keys.stock("s1", "a"), "a", row)
            text = "".join(f"{c}\t{u}\t{int(fb)}\n" for c, (u, fb) in pools.items())
            if text:
                await redis.hset(Keys.pools("s1"), "a", text)
            for c, units in held.items():
                await redis.hset(Keys.channel_holds("s1"), f"a\t{c}", units)
            expected = await hold_script_says(redis, storage, "a", channel, rule)
            _, offers = await storage.offers(channel, {"s1": rule}, [("s1", "a")])
            assert offers == [expected]
        finally:
            await redis.aclose()

    asyncio.run(check())


# -- the read cache --------------------------------------------------------------------------


async def hold(storage: Storage, pair: Pair, channel: str, qty: int) -> str | None:
    """A hold of qty for the channel under its rule; its id, or None when it was short."""
    rid = f"r{next(_ids)}"
    loc, sku = pair
    call = storage.hold_call(
        rid,
        rid,
        loc,
        [Line(loc, sku, qty)],
        now=0,
        expires_at=HOUR_MS,
        directory_lines=None,
        channel=ChannelHold.of(channel, RULES[channel]),
    )
    (reply,) = await storage.hold([call])
    return rid if reply.reply is Reply.HELD else None


async def warm(cache: RowCache) -> None:
    """Reads until every location is followed and every row kept for every channel."""
    for _ in range(200):
        served = hits(cache)
        for channel in CHANNELS:
            await cache.offers(channel, rules_at(channel), PAIRS)
        if hits(cache) == served + len(CHANNELS) * len(PAIRS):
            return
        await cache.caught_up()
        await asyncio.sleep(0.01)
    raise AssertionError(f"not warm: {cache.locations.keys()}")


class ChannelCacheMachine(TwoProcesses):
    """Holds for channels, releases, pools set and stock counted, through this process and
    through another, cached channel reads, catch-ups and cut feeds, in any order. Every
    answer is what the channel might hold of the row at some time since this process last
    knew better (its own last write there, or its last catch-up)."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(redis_url)
        # each row as Redis held it after each write, with what each channel might hold
        self.history: dict[Pair, list[tuple[StockRow, dict[str, int]]]] = {p: [] for p in PAIRS}
        self.floor: dict[Pair, int] = dict.fromkeys(PAIRS, 0)
        self.held: list[tuple[str, Pair]] = []

    def by(self, here: bool) -> Storage:
        return self.ours if here else self.theirs

    def _record(self, pair: Pair, here: bool) -> None:
        """What each channel may hold of the row now, read from Redis."""
        read = {c: self.run(self.ours.offers(c, rules_at(c), [pair])) for c in CHANNELS}
        (row,) = read["web"][0]
        self.history[pair].append((row, {c: offers[0] for c, (_, offers) in read.items()}))
        if here:  # this process knows of its own write
            self.floor[pair] = len(self.history[pair]) - 1

    @initialize()
    def stock_every_row(self) -> None:
        for pair in PAIRS:
            self.run(change(self.theirs, *pair, 20, count=True))
            self._record(pair, here=False)
            self.floor[pair] = len(self.history[pair]) - 1
        self.run(warm(self.cache))

    @rule(
        pair=st.sampled_from(PAIRS),
        channel=st.sampled_from(CHANNELS),
        qty=st.integers(1, 6),
        here=st.booleans(),
    )
    def hold_for(self, pair: Pair, channel: str, qty: int, here: bool) -> None:
        rid = self.run(hold(self.by(here), pair, channel, qty))
        if rid is not None:
            self.held.append((rid, pair))
            self._record(pair, here)

    @rule(data=st.data(), here=st.booleans())
    def release(self, data: st.DataObject, here: bool) -> None:
        if not self.held:
            return
        rid, pair = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.run(self.by(here).release_part(rid, pair[0], [pair[1]], ReleaseMode.RELEASE))
        self._record(pair, here)

    @rule(
        pair=st.sampled_from(PAIRS),
        channel=st.sampled_from(CHANNELS),
        units=st.integers(0, 8),
        fallback=st.booleans(),
        here=st.booleans(),
    )
    def set_pool(self, pair: Pair, channel: str, units: int, fallback: bool, here: bool) -> None:
        loc, sku = pair
        try:
            self.run(self.by(here).set_pools(loc, [(sku, Pool(channel, units, fallback))]))
        except Exception as exc:  # more than is there: refused, nothing set
            assert "pools:" in str(exc)
            return
        self._record(pair, here)

    @rule(pair=st.sampled_from(PAIRS), qty=st.integers(-4, 4), here=st.booleans())
    def stock_changes(self, pair: Pair, qty: int, here: bool) -> None:
        self.run(change(self.by(here), *pair, qty))
        self._record(pair, here)

    @rule(
        pairs=st.lists(st.sampled_from(PAIRS), min_size=1, max_size=5, unique=True),
        channel=st.sampled_from(CHANNELS),
    )
    def read(self, pairs: list[Pair], channel: str) -> None:
        rows, offers = self.run(self.cache.offers(channel, rules_at(channel), pairs))
        for pair, row, offer in zip(pairs, rows, offers, strict=True):
            allowed = [(r, o[channel]) for r, o in self.history[pair][self.floor[pair] :]]
            assert (row, offer) in allowed, (
                f"{pair} {channel}: read {row} {offer}, Redis held {allowed}"
            )

    @rule()
    def catch_up(self) -> None:
        self.run(self.cache.caught_up())
        self.floor = {pair: len(rows) - 1 for pair, rows in self.history.items()}

    @rule(channel=st.sampled_from(CHANNELS))
    def catch_up_and_list(self, channel: str) -> None:
        self.catch_up()
        self.read(list(PAIRS), channel)


@ON_BOTH
def test_cached_channel_reads_agree_with_redis_after_any_interleaving(redis_url: str) -> None:
    run_state_machine_as_test(
        lambda: ChannelCacheMachine(redis_url),
        settings=settings(max_examples=20, stateful_step_count=40, deadline=None),
    )


@ON_BOTH
async def test_a_warm_channel_listing_costs_no_round_trip_and_sees_another_process(
    storage: Storage, other: Storage
) -> None:
    # given stocked rows, a pool for the app on one, and a cache that has read them
    for loc, sku in PAIRS:
        await change(other, loc, sku, 10, count=True)
    await other.set_pools("s1", [("a", Pool("app", 4))])
    cache = await cache_on(storage)
    try:
        await warm(cache)
        # when another process holds for the web, for the app from its pool, for the
        # marketplace (whose share is capped: its own count matters), and grows the pool
        assert await hold(other, ("s2", "b"), "web", 3) is not None
        assert await hold(other, ("s1", "a"), "app", 1) is not None
        assert await hold(other, ("s3", "c"), "mkt", 2) is not None
        await other.set_pools("s1", [("a", Pool("app", 6))])
        await cache.caught_up()
        # then the next listings are all hits, and what Redis says
        for channel, expected in (
            ("web", {("s1", "a"): 9 - 5 - 2, ("s2", "b"): 10 - 3 - 2}),
            ("app", {("s1", "a"): 5 + 0, ("s2", "b"): 10 - 3}),
            ("mkt", {("s3", "c"): 10 * 4 // 10 - 2, ("s2", "b"): min(10 - 3 - 1, 10 * 4 // 10)}),
        ):
            served = hits(cache)
            rows, got = await cache.offers(channel, rules_at(channel), PAIRS)
            assert hits(cache) == served + len(PAIRS)
            assert (rows, got) == await storage.offers(channel, rules_at(channel), PAIRS)
            offered = dict(zip(PAIRS, got, strict=True))
            assert {pair: offered[pair] for pair in expected} == expected, channel
    finally:
        await cache.close()


async def test_a_rows_channels_as_kept_are_out_of_the_collectors_sight(
    storage: Storage, other: Storage
) -> None:
    # given rows without pools whose channels a cache has read, and one a message then told
    for loc, sku in PAIRS:
        await change(other, loc, sku, 10, count=True)
    cache = await cache_on(storage)
    try:
        await warm(cache)
        assert await hold(other, ("s2", "b"), "web", 3) is not None
        await cache.caught_up()
        # when full collections have passed (a tuple is untracked once what it holds is, so
        # nested tuples may take a pass a level)
        for _ in range(3):
            gc.collect()
        # then none of what is kept of their channels is tracked: a full collection's walk
        # does not grow with the rows listed for channels
        kept = [k for state in cache.locations.values() for k in state.channels.values()]
        assert len(kept) == len(PAIRS)
        assert not any(gc.is_tracked(k) for k in kept)
    finally:
        await cache.close()
