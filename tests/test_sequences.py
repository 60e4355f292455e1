"""Numbered sources (I5's per-source watermark): an event whose source numbers it is told
from a duplicate by its number, kept as one watermark per (source, location) and the gaps
below it, never by remembering its id. Exactly once under duplicates and reordering; gaps
that stay open are reported once; nothing grows with the number of events sent in order."""

from __future__ import annotations

import logging
import random

import hypothesis.strategies as st
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from redis.asyncio.cluster import RedisCluster

from engine.domain.errors import InvalidArgument
from engine.domain.events import check_event
from engine.domain.model import (
    MAX_SEQUENCE,
    EventKind,
    EventOutcome,
    Location,
    LocationType,
    StockEvent,
)
from engine.metrics import Metrics
from engine.store.codecs import Gap
from engine.store.keys import Keys
from engine.store.storage import Storage
from engine.usecases.ingest import Ingest
from engine.usecases.locations import LocationRegistry

from .conftest import BUCKETS, HOUR_MS, ON_BOTH

pytestmark = ON_BOTH

NOW = 1_767_225_600_000
GRACE = 60_000
WINDOW = 72 * HOUR_MS
APPLIED, DUPLICATE = EventOutcome.APPLIED, EventOutcome.DUPLICATE
LOC, SKU = "store-a", "sku-1"


def numbered(n: int, qty: int = -1, source: str = "till-7", eid: str = "") -> StockEvent:
    return StockEvent(
        eid or f"sale-{n}", LOC, SKU, EventKind.DELTA, qty, NOW + n, source=source, sequence=n
    )


@pytest.fixture
async def storage(redis_url: str, redis: aioredis.Redis | RedisCluster) -> Storage:
    s = Storage(
        redis,
        stock_buckets=BUCKETS,
        retention_ms=WINDOW,
        event_window_ms=WINDOW,
        gap_grace_ms=GRACE,
    )
    await s.load_scripts()
    return s


async def on_hand(storage: Storage) -> int:
    (row,) = await storage.rows([(LOC, SKU)])
    return row.on_hand


async def test_in_order_events_cost_one_watermark_and_no_event_ids(
    storage: Storage, redis: aioredis.Redis | RedisCluster
) -> None:
    got = await storage.apply_events(LOC, [numbered(n) for n in range(1, 301)], NOW)
    assert set(got.outcomes) == {APPLIED}
    again = await storage.apply_events(LOC, [numbered(n) for n in range(1, 301)], NOW + 1)
    assert set(again.outcomes) == {DUPLICATE}
    assert await on_hand(storage) == -300
    assert await redis.zcard(Keys.seen(LOC)) == 0  # no event id remembered
    assert await redis.hgetall(Keys.marks(LOC)) == {b"till-7": b"300"}
    assert not await redis.exists(Keys.gaps(LOC, "till-7"))


async def test_a_number_is_the_identity_whatever_the_event_id(storage: Storage) -> None:
    await storage.apply_events(LOC, [numbered(1, eid="a")], NOW)
    got = await storage.apply_events(LOC, [numbered(1, eid="b"), numbered(2, eid="a")], NOW)
    assert got.outcomes == [DUPLICATE, APPLIED]
    assert await on_hand(storage) == -2


async def test_sources_and_locations_are_numbered_apart(storage: Storage) -> None:
    other_source = numbered(1, source="till-8")
    unnumbered = StockEvent("sale-1", LOC, SKU, EventKind.DELTA, -1, NOW + 1, source="till-7")
    got = await storage.apply_events(LOC, [numbered(1), other_source, unnumbered], NOW)
    assert got.outcomes == [APPLIED, APPLIED, APPLIED]
    elsewhere = StockEvent("sale-1", "store-b", SKU, EventKind.DELTA, -1, NOW + 1, "", "till-7", 1)
    assert (await storage.apply_events("store-b", [elsewhere], NOW)).outcomes == [APPLIED]


async def test_reordered_numbers_open_a_gap_that_late_arrivals_fill(
    storage: Storage, redis: aioredis.Redis | RedisCluster
) -> None:
    gaps = Keys.gaps(LOC, "till-7")
    got = await storage.apply_events(LOC, [numbered(1), numbered(5)], NOW)
    assert got.outcomes == [APPLIED, APPLIED]
    assert await redis.zrange(gaps, 0, -1) == [f"2\t4\t{NOW}".encode()]
    got = await storage.apply_events(LOC, [numbered(3), numbered(3), numbered(5)], NOW + 10)
    assert got.outcomes == [APPLIED, DUPLICATE, DUPLICATE]
    assert await redis.zrange(gaps, 0, -1) == [f"2\t2\t{NOW}".encode(), f"4\t4\t{NOW}".encode()]
    got = await storage.apply_events(LOC, [numbered(4), numbered(2)], NOW + 20)
    assert got.outcomes == [APPLIED, APPLIED]
    assert not await redis.exists(gaps)  # every hole filled: nothing left but the watermark
    assert await on_hand(storage) == -5


async def test_a_gap_is_reported_once_when_open_past_the_grace(storage: Storage) -> None:
    opened = await storage.apply_events(LOC, [numbered(1), numbered(10)], NOW)
    assert opened.gaps == []  # reordering is normal: a gap is not news yet
    early = await storage.apply_events(LOC, [numbered(11)], NOW + GRACE - 1)
    assert early.gaps == []
    due = await storage.apply_events(LOC, [numbered(12), numbered(20)], NOW + GRACE)
    assert due.gaps == [Gap(LOC, "till-7", 2, 9)]  # 13-19 opened just now: not yet
    filled = await storage.apply_events(LOC, [numbered(5)], NOW + GRACE + 1)
    assert filled.gaps == []  # 2-4 and 6-9 were reported with 2-9
    later = await storage.apply_events(LOC, [numbered(21)], NOW + 2 * GRACE)
    assert later.gaps == [Gap(LOC, "till-7", 13, 19)]
    assert (await storage.apply_events(LOC, [numbered(22)], NOW + 3 * GRACE)).gaps == []


async def test_a_gap_older_than_the_window_is_forgotten(
    storage: Storage, redis: aioredis.Redis | RedisCluster
) -> None:
    await storage.apply_events(LOC, [numbered(1), numbered(3)], NOW)
    await storage.apply_events(LOC, [numbered(4)], NOW + WINDOW + 1)
    assert not await redis.exists(Keys.gaps(LOC, "till-7"))
    late = await storage.apply_events(LOC, [numbered(2)], NOW + WINDOW + 2)
    assert late.outcomes == [DUPLICATE]  # past any platform's retries: taken for a duplicate


async def test_open_gaps_are_bounded_the_lowest_given_up_first(
    storage: Storage, redis: aioredis.Redis | RedisCluster
) -> None:
    odd = [numbered(n) for n in range(1, 2004, 2)]  # 1, 3, ... 2003: a gap below each but 1
    given_up = []
    for i in range(0, len(odd), 100):
        given_up += (await storage.apply_events(LOC, odd[i : i + 100], NOW)).gaps
    gaps = Keys.gaps(LOC, "till-7")
    assert await redis.zcard(gaps) == 1000
    assert (await redis.zrange(gaps, 0, 0))[0].startswith(b"4\t4\t")  # 2 was given up
    assert given_up == [Gap(LOC, "till-7", 2, 2)]  # and reported then, not yet due or not
    late = await storage.apply_events(LOC, [numbered(2), numbered(4)], NOW + 1)
    assert late.outcomes == [DUPLICATE, APPLIED]


async def test_numbers_up_to_two_to_the_53_stay_exact(storage: Storage) -> None:
    top = MAX_SEQUENCE
    got = await storage.apply_events(LOC, [numbered(top - 2), numbered(top)], NOW)
    assert got.outcomes == [APPLIED, APPLIED]
    again = await storage.apply_events(LOC, [numbered(top), numbered(top - 1)], NOW + GRACE)
    assert again.outcomes == [DUPLICATE, APPLIED]
    assert again.gaps == [Gap(LOC, "till-7", 1, top - 3)]


@pytest.mark.parametrize(
    ("sequence", "source", "field", "why"),
    [
        (-1, "till-7", "events[0].sequence", "must be 1 to"),
        (MAX_SEQUENCE + 1, "till-7", "events[0].sequence", "must be 1 to"),
        (5, "", "events[0].source", "must be set with a sequence"),
    ],
)
def test_a_bad_number_is_refused_naming_the_field(
    redis_url: str, sequence: int, source: str, field: str, why: str
) -> None:
    event = StockEvent("e", LOC, SKU, EventKind.DELTA, -1, NOW, source=source, sequence=sequence)
    with pytest.raises(InvalidArgument) as err:
        check_event(event, "events[0]")
    assert err.value.field == field
    assert why in err.value.reason


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(min_value=1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
    cut_every=st.integers(min_value=1, max_value=20),
)
async def test_any_order_with_duplicates_applies_each_number_once(
    storage: Storage, redis: aioredis.Redis | RedisCluster, n: int, seed: int, cut_every: int
) -> None:
    await redis.flushall()
    rng = random.Random(seed)
    sent = [numbered(k, qty=-k) for k in range(1, n + 1)]
    sent += rng.choices(sent, k=n // 2)  # re-sent, at random
    rng.shuffle(sent)
    applied = []
    for i in range(0, len(sent), cut_every):
        got = await storage.apply_events(LOC, sent[i : i + cut_every], NOW + i)
        applied += [
            ev.sequence
            for ev, o in zip(sent[i : i + cut_every], got.outcomes, strict=True)
            if o is APPLIED
        ]
    assert sorted(applied) == list(range(1, n + 1))
    assert await on_hand(storage) == -n * (n + 1) // 2
    assert not await redis.exists(Keys.gaps(LOC, "till-7"))


async def test_a_gap_is_logged_naming_source_location_and_range_and_counted(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    now = [NOW]
    metrics = Metrics()
    ingest = Ingest(storage, LocationRegistry(storage), metrics, lambda: now[0])
    await ingest.locations.upsert([Location(LOC, "A", LocationType.STORE, 51.5, -0.1)])
    await ingest.apply([numbered(1), numbered(4)])
    now[0] += GRACE
    with caplog.at_level(logging.WARNING, "engine.usecases.ingest"):
        await ingest.apply([numbered(5)])
    assert "sequence gap: source till-7 at store-a: events 2 to 3 have not arrived" in caplog.text
    assert metrics.registry.get_sample_value("omnistock_sequence_gaps_total") == 1
    assert metrics.registry.get_sample_value("omnistock_sequence_missing_total") == 2
