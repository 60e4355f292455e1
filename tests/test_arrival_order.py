"""I5: a row's on_hand depends only on which stock events arrived, never on their order:
the newest COUNT by source time, plus every DELTA after it; duplicates count once."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app import redis_client
from engine.domain import EventKind, StockEvent
from engine.storage import Storage

NOW = 1_767_225_600_000
L = "store-a"


def expected_on_hand(events: list[StockEvent]) -> int:
    """The rule of the brief, from scratch: order-free by construction."""
    counts = [e for e in events if e.kind is EventKind.COUNT]
    base_time, base = -1, 0
    if counts:
        newest = max(counts, key=lambda e: (e.source_time, e.qty))
        base_time, base = newest.source_time, newest.qty
    later = sum(e.qty for e in events if e.kind is EventKind.DELTA and e.source_time > base_time)
    return base + later


def event_sets() -> st.SearchStrategy[list[StockEvent]]:
    times = st.integers(min_value=1, max_value=40)  # few distinct times: ties happen

    def build(raw: list[tuple[bool, int, int]]) -> list[StockEvent]:
        return [
            StockEvent(
                f"e{i}",
                L,
                "sku",
                EventKind.COUNT if is_count else EventKind.DELTA,
                qty if is_count else (qty - 10 or 1),
                NOW - 60_000 + t * 1000,
            )
            for i, (is_count, t, qty) in enumerate(raw)
        ]

    item = st.tuples(st.booleans(), times, st.integers(min_value=0, max_value=20))
    return st.lists(item, min_size=1, max_size=12).map(build)


async def final_row(url: str, arrivals: list[StockEvent], batch: int) -> tuple[int, int]:
    client = redis_client(url, 2.0)
    try:
        await client.flushall()
        storage = Storage(client, stock_buckets=4, retention_ms=10**9, event_window_ms=10**9)
        for start in range(0, len(arrivals), batch):
            await storage.apply_events(L, arrivals[start : start + batch], NOW)
        (row,) = await storage.rows([(L, "sku")])
        return row.on_hand, row.as_of
    finally:
        await client.aclose()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), events=event_sets())
def test_any_arrival_order_with_duplicates_ends_with_the_same_on_hand(
    redis_url: str, data: st.DataObject, events: list[StockEvent]
) -> None:
    # given a set of COUNT and DELTA events, some re-sent (same event id)
    resent = data.draw(st.lists(st.sampled_from(events), max_size=4))
    first = data.draw(st.permutations(events + resent))
    second = data.draw(st.permutations(events + resent))
    batch = data.draw(st.integers(min_value=1, max_value=5))
    # when they arrive in two different orders and batchings
    a = asyncio.run(final_row(redis_url, first, batch))
    b = asyncio.run(final_row(redis_url, second, 1))
    # then both rows agree, with each other and with the rule of the brief
    assert a == b
    assert a[0] == expected_on_hand(events)


@pytest.mark.parametrize(
    ("arrivals", "on_hand"),
    [
        # an offline sale made before a count but delivered after it is not applied
        ([("c", "COUNT", 10, 20), ("s", "DELTA", -2, 10)], 10),
        # a sale after the count, delivered before it, is kept
        ([("s", "DELTA", -2, 30), ("c", "COUNT", 10, 20)], 8),
        # an older count delivered late changes nothing
        ([("c2", "COUNT", 7, 30), ("c1", "COUNT", 10, 20)], 7),
        # a re-sent delta counts once
        ([("d", "DELTA", 3, 30), ("d", "DELTA", 3, 30), ("c", "COUNT", 1, 20)], 4),
    ],
    ids=["offline-sale-before-count", "sale-after-count", "older-count", "resent-delta"],
)
def test_examples_of_the_ordering_rule(
    redis_url: str, arrivals: list[tuple[str, str, int, int]], on_hand: int
) -> None:
    events = [
        StockEvent(eid, L, "sku", EventKind(kind), qty, NOW - 60_000 + t * 1000)
        for eid, kind, qty, t in arrivals
    ]
    assert asyncio.run(final_row(redis_url, events, 1))[0] == on_hand
