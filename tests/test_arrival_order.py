"""A row's on_hand depends only on which stock events arrived, never on the order or the
batches they arrived in, and each event counts once however often it is re-sent (I5).

The rule, from scratch: on_hand is the newest COUNT by source time (of two at the same
time, the larger), plus every DELTA and every commit through the engine that happened
after that count; with no count, the sum of them all. `as_of` is that count's time.

The property sends one multiset of events (distinct ids, a few of them re-sent) for one
row in two orders, cut into batches at random, to two fresh locations, and compares both
rows with the rule. The examples after it name the behaviours one by one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings

from engine.domain.clock import ManualClock
from engine.domain.model import EventKind, EventOutcome, Line, StockEvent, StockRow
from engine.store.connect import redis_client
from engine.store.storage import Storage
from engine.usecases.reservations import Reservations

from .conftest import BUCKETS, HOUR_MS, register

T = TypeVar("T")
NOW = 1_767_225_600_000
SKU = "sku-1"
DUPLICATE, STALE = EventOutcome.DUPLICATE, EventOutcome.STALE


def count(eid: str, qty: int, t: int, location: str = "store-a") -> StockEvent:
    return StockEvent(eid, location, SKU, EventKind.COUNT, qty, t)


def delta(eid: str, qty: int, t: int, location: str = "store-a") -> StockEvent:
    return StockEvent(eid, location, SKU, EventKind.DELTA, qty, t)


def from_scratch(events: list[StockEvent]) -> tuple[int, int]:
    """(on_hand, as_of) of one row by the rule, from the distinct events alone."""
    distinct = {ev.event_id: ev for ev in events}.values()
    counts = [(ev.source_time, ev.qty) for ev in distinct if ev.kind is EventKind.COUNT]
    as_of, base = max(counts) if counts else (0, 0)
    later = [ev.qty for ev in distinct if ev.kind is EventKind.DELTA and ev.source_time > as_of]
    return base + sum(later), as_of


# -- the property ----------------------------------------------------------------------


class Engine:
    """The storage seam over its own event loop and client, for synchronous hypothesis
    tests (one per module: each example starts from a flushed store)."""

    def __init__(self, redis_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.redis: aioredis.Redis = redis_client(redis_url, 2.0)
        self.storage = Storage(
            self.redis,
            stock_buckets=BUCKETS,
            retention_ms=72 * HOUR_MS,
            event_window_ms=72 * HOUR_MS,
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    def deliver(
        self, location: str, events: list[StockEvent], cuts: list[bool]
    ) -> tuple[StockRow, list[EventOutcome]]:
        """Sends the events in this order, cutting a batch after each event whose cut is
        set; answers the row and every outcome."""
        outcomes: list[EventOutcome] = []
        batch: list[StockEvent] = []
        for i, (ev, cut) in enumerate(zip(events, cuts, strict=True)):
            batch.append(dataclasses.replace(ev, location=location))
            if cut or i == len(events) - 1:
                got = self.run(self.storage.apply_events(location, batch, NOW + i))
                outcomes += got.outcomes
                batch = []
        (row,) = self.run(self.storage.rows([(location, SKU)]))
        return row, outcomes


@pytest.fixture(scope="module")
def engine(one_redis_url: str) -> Iterator[Engine]:
    e = Engine(one_redis_url)
    yield e
    e.close()


@dataclass(frozen=True)
class Delivery:
    events: list[StockEvent]  # distinct ids, in the order they were made
    first: list[StockEvent]  # the events and the re-sent ones, in one arrival order
    second: list[StockEvent]  # the same multiset, in another
    first_cuts: list[bool]
    second_cuts: list[bool]


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    # Few distinct source times within the last hours, so that events share them.
    times = draw(st.lists(st.integers(1, 4 * HOUR_MS), min_size=1, max_size=5, unique=True))
    when = st.sampled_from([NOW - ago for ago in times])
    made = st.one_of(
        st.tuples(st.just(EventKind.COUNT), st.integers(0, 40), when),
        st.tuples(st.just(EventKind.DELTA), st.integers(-9, 9).filter(bool), when),
    )
    kinds = draw(st.lists(made, min_size=1, max_size=12))
    events = [
        StockEvent(f"ev-{i}", "any", SKU, kind, qty, t) for i, (kind, qty, t) in enumerate(kinds)
    ]
    resent = draw(st.lists(st.sampled_from(events), max_size=6))
    first = draw(st.permutations(events + resent))
    second = draw(st.permutations(events + resent))
    n = len(first)
    cuts = st.lists(st.booleans(), min_size=n, max_size=n)
    return Delivery(events, first, second, draw(cuts), draw(cuts))


@settings(max_examples=200, deadline=None)
@given(delivery=deliveries())
def test_on_hand_depends_only_on_which_events_arrived(engine: Engine, delivery: Delivery) -> None:
    # given a fresh store
    engine.run(engine.redis.flushall())
    # when one multiset of events arrives in two orders, in batches cut at random
    first, first_outcomes = engine.deliver("first", delivery.first, delivery.first_cuts)
    second, second_outcomes = engine.deliver("second", delivery.second, delivery.second_cuts)
    # then both rows are the one the rule computes from the distinct events
    expected = from_scratch(delivery.events)
    assert (first.on_hand, first.as_of) == expected
    assert (second.on_hand, second.as_of) == expected
    # and every event took effect (or was found stale) exactly once
    for sent, outcomes in ((delivery.first, first_outcomes), (delivery.second, second_outcomes)):
        once = sorted(ev.event_id for ev, o in zip(sent, outcomes, strict=True) if o != DUPLICATE)
        assert once == sorted(ev.event_id for ev in delivery.events)


# -- the behaviours, one by one --------------------------------------------------------


async def deliver(storage: Storage, *batches: list[StockEvent]) -> list[EventOutcome]:
    outcomes: list[EventOutcome] = []
    for batch in batches:
        outcomes += (await storage.apply_events("store-a", batch, NOW)).outcomes
    return outcomes


async def row(storage: Storage) -> StockRow:
    (got,) = await storage.rows([("store-a", SKU)])
    return got


async def test_offline_sale_made_before_a_count_but_delivered_after_it_is_not_applied(
    storage: Storage,
) -> None:
    # given a count of 10 taken an hour ago
    await deliver(storage, [count("count", 10, NOW - HOUR_MS)])
    # when a till that was offline delivers a sale it made two hours ago
    outcomes = await deliver(storage, [delta("sale", -1, NOW - 2 * HOUR_MS)])
    # then the count already includes that sale
    assert outcomes == [STALE]
    assert (await row(storage)).on_hand == 10


async def test_sale_made_after_a_count_but_delivered_before_it_is_kept(storage: Storage) -> None:
    # given a sale made a minute ago, delivered first
    await deliver(storage, [delta("sale", -2, NOW - 60_000)])
    # when the count of 10 taken an hour ago arrives after it
    await deliver(storage, [count("count", 10, NOW - HOUR_MS)])
    # then the count does not erase the later sale
    got = await row(storage)
    assert (got.on_hand, got.as_of) == (8, NOW - HOUR_MS)


async def test_count_older_than_the_last_one_changes_nothing(storage: Storage) -> None:
    await deliver(storage, [count("new", 10, NOW - HOUR_MS), delta("sale", -1, NOW - 60_000)])
    outcomes = await deliver(storage, [count("old", 50, NOW - 2 * HOUR_MS)])
    assert outcomes == [STALE]
    got = await row(storage)
    assert (got.on_hand, got.as_of) == (9, NOW - HOUR_MS)


@pytest.mark.parametrize("order", ["count first", "sale first"])
async def test_sale_at_the_very_time_of_the_count_is_part_of_the_count(
    storage: Storage, order: str
) -> None:
    t = NOW - HOUR_MS
    counted, sale = [count("count", 10, t)], [delta("sale", -1, t)]
    await deliver(storage, *((counted, sale) if order == "count first" else (sale, counted)))
    assert (await row(storage)).on_hand == 10


@pytest.mark.parametrize("order", ["small first", "large first"])
async def test_of_two_counts_at_the_same_time_the_larger_wins_in_any_order(
    storage: Storage, order: str
) -> None:
    t = NOW - HOUR_MS
    small, large = count("small", 4, t), count("large", 7, t)
    batches = [[small], [large]] if order == "small first" else [[large], [small]]
    await deliver(storage, [delta("sale", -1, t + 1)], *batches)
    got = await row(storage)
    assert (got.on_hand, got.as_of) == (6, t)


async def test_duplicate_resent_after_a_newer_count_is_applied_once(storage: Storage) -> None:
    await deliver(storage, [delta("sale", -3, NOW - 60_000)])
    await deliver(storage, [count("count", 10, NOW - HOUR_MS)])
    # the platform retries the sale it already delivered
    assert await deliver(storage, [delta("sale", -3, NOW - 60_000)]) == [DUPLICATE]
    assert (await row(storage)).on_hand == 7


async def test_a_count_taken_before_a_commit_keeps_the_commit_and_one_after_it_does_not(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given 10 units, and a sale of 3 committed through the engine now
    await deliver(storage, [count("count", 10, NOW - HOUR_MS)])
    await register(reservations, "store-a")
    await reservations.reserve("pos-1", [Line("store-a", SKU, 3)], 30)
    await reservations.commit("pos-1")
    committed_at = clock.now_ms()
    # when a count taken a minute before the commit arrives: it keeps the commit
    await deliver(storage, [count("before", 10, committed_at - 60_000)])
    assert (await row(storage)).on_hand == 7
    # and a count taken after the commit already includes it
    clock.advance(120_000)
    await storage.apply_events("store-a", [count("after", 10, committed_at + 1)], clock.now_ms())
    assert (await row(storage)).on_hand == 10


async def test_an_event_whose_id_reads_like_a_commit_is_counted_apart_from_it(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given 10 units, and a sale of 2 committed through the engine as reservation pos-1
    await deliver(storage, [count("count", 10, NOW - HOUR_MS)])
    await register(reservations, "store-a")
    await reservations.reserve("pos-1", [Line("store-a", SKU, 2)], 30)
    await reservations.commit("pos-1")
    # and another sale of 2 from the store, whose event id happens to be "c:pos-1"
    clock.advance(10)
    await storage.apply_events("store-a", [delta("c:pos-1", -2, NOW + 5)], clock.now_ms())
    assert (await row(storage)).on_hand == 6
    # when a count of 10 taken before both arrives
    await storage.apply_events("store-a", [count("older", 10, NOW - 50)], clock.now_ms())
    # then both sales are still subtracted: 10 - 2 - 2
    assert (await row(storage)).on_hand == 6
