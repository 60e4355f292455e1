"""Stock states (issue 17): a row's units split into sellable (on_hand), damaged,
quality_control and returned; stock events name a state, a MOVE moves units between two
states of one row at once; only sellable units are available; the ordering rules (I5) hold
per state; a full count may count by state. On one Redis and on the cluster."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from engine.domain.clock import ManualClock
from engine.domain.errors import InvalidArgument
from engine.domain.events import check_event
from engine.domain.model import EventKind, EventOutcome, Line, StockEvent
from engine.domain.states import StockState, row_name
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.storage import Storage
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, register, served

pytestmark = ON_BOTH

DAMAGED, RETURNED, SELLABLE = StockState.DAMAGED, StockState.RETURNED, StockState.SELLABLE
QC = StockState.QUALITY_CONTROL


def ev(
    eid: str,
    kind: EventKind,
    qty: int,
    t: int,
    state: StockState = SELLABLE,
    to: StockState = SELLABLE,
    sku: str = "S1",
) -> StockEvent:
    return StockEvent(eid, "L1", sku, kind, qty, t, state=state, to_state=to)


async def units(storage: Storage, sku: str = "S1") -> dict[StockState, int]:
    states = list(StockState)
    rows = await storage.rows([("L1", row_name(sku, s)) for s in states])
    return {s: r.on_hand for s, r in zip(states, rows, strict=True)}


async def test_units_in_other_states_are_never_available(
    storage: Storage, clock: ManualClock
) -> None:
    # given 10 sellable units
    now = clock.now_ms()
    await storage.apply_events("L1", [ev("c1", EventKind.COUNT, 10, now - 100)], now)
    # when 3 damaged and 2 returned units are reported
    got = await storage.apply_events(
        "L1",
        [
            ev("d1", EventKind.DELTA, 3, now - 50, DAMAGED),
            ev("d2", EventKind.COUNT, 2, now - 50, RETURNED),
        ],
        now,
    )
    # then they are rows of their own; the sellable row is as it was
    assert got.outcomes == [EventOutcome.APPLIED] * 2
    assert await units(storage) == {SELLABLE: 10, DAMAGED: 3, QC: 0, RETURNED: 2}
    row = (await storage.rows([("L1", "S1")]))[0]
    assert (row.on_hand, row.available, row.version) == (10, 10, 1)


async def test_a_move_conserves_units_and_is_applied_once(
    storage: Storage, clock: ManualClock
) -> None:
    now = clock.now_ms()
    await storage.apply_events(
        "L1",
        [
            ev("c1", EventKind.COUNT, 10, now - 100),
            ev("c2", EventKind.COUNT, 4, now - 100, RETURNED),
        ],
        now,
    )
    # inspection passed: 3 returned units back on sale; one found damaged on the shelf
    moves = [
        ev("m1", EventKind.MOVE, 3, now - 50, RETURNED, SELLABLE),
        ev("m2", EventKind.MOVE, 1, now - 40, SELLABLE, DAMAGED),
    ]
    got = await storage.apply_events("L1", moves, now)
    assert got.outcomes == [EventOutcome.APPLIED] * 2
    want = {SELLABLE: 12, DAMAGED: 1, QC: 0, RETURNED: 1}
    assert await units(storage) == want
    assert sum(want.values()) == 14
    # sent again: duplicates, nothing moves twice
    again = await storage.apply_events("L1", moves, now)
    assert again.outcomes == [EventOutcome.DUPLICATE] * 2
    assert await units(storage) == want


async def test_a_move_out_of_sellable_leaves_the_holds_and_reports_the_row_short(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given 5 units, 4 of them held
    now = clock.now_ms()
    await storage.apply_events("L1", [ev("c1", EventKind.COUNT, 5, now - 100)], now)
    await register(reservations, "L1")
    assert (await reservations.reserve("r1", [Line("L1", "S1", 4)], 60)).ok
    # when 3 are found damaged
    got = await storage.apply_events(
        "L1", [ev("m1", EventKind.MOVE, 3, now - 50, SELLABLE, DAMAGED)], now
    )
    # then the hold stays (I3), the row is short, as a negative DELTA would leave it
    assert got.short_rows == [("S1", 2, 4)]
    row = (await storage.rows([("L1", "S1")]))[0]
    assert (row.on_hand, row.reserved, row.available) == (2, 4, 0)
    assert (await units(storage))[DAMAGED] == 3


async def test_the_ordering_rules_hold_per_state_whatever_the_arrival_order(
    storage: Storage, clock: ManualClock
) -> None:
    """Each state's units depend only on which events arrived: a COUNT of damaged units
    older than its row's as_of changes nothing, a DELTA after it re-applies, and a MOVE is a
    DELTA on each side, each by its own row's count."""
    now = clock.now_ms()
    events = [
        ev("a", EventKind.COUNT, 10, now - 900),
        ev("b", EventKind.COUNT, 2, now - 500, DAMAGED),
        ev("c", EventKind.DELTA, 1, now - 700, DAMAGED),  # before b's count: in it
        ev("d", EventKind.DELTA, 4, now - 300, DAMAGED),
        ev("e", EventKind.MOVE, 3, now - 600, SELLABLE, DAMAGED),  # after a, before b
        ev("f", EventKind.COUNT, 1, now - 800, DAMAGED),  # older than b
        ev("g", EventKind.MOVE, 2, now - 200, DAMAGED, QC),
    ]
    want = {SELLABLE: 7, DAMAGED: 4, QC: 2, RETURNED: 0}
    for n, order in enumerate(itertools.islice(itertools.permutations(events), 0, None, 701)):
        await storage.redis.flushall()
        await storage.apply_events("L1", list(order), now)
        assert await units(storage) == want, [e.event_id for e in order]
        assert n < 10


async def test_state_rows_are_not_published_nor_read_as_skus(
    storage: Storage, clock: ManualClock, redis_url: str
) -> None:
    async with served(redis_url, clock) as (_, stubs):
        # given a watch of every row at L1
        watch = stubs.availability.WatchAvailability(
            pb.WatchAvailabilityRequest(location_ids=["L1"])
        )
        first_change = asyncio.ensure_future(watch.read())
        await asyncio.sleep(0.5)  # subscribed
        # when damaged units change, then sellable ones
        now = clock.now_ms()
        await storage.apply_events("L1", [ev("d1", EventKind.DELTA, 3, now - 50, DAMAGED)], now)
        await storage.apply_events("L1", [ev("d2", EventKind.DELTA, 2, now - 40)], now)
        # then the first change a watcher hears of is the sellable row's
        first = await asyncio.wait_for(first_change, 5)
        watch.cancel()
        assert (first.level.sku, first.level.on_hand) == ("S1", 2)
    # and a whole-bucket read keeps state rows out
    assert list(await storage.rows_at("L1")) == ["S1"]


async def test_a_full_count_counts_by_state_and_zeroes_only_sellable_rows(
    storage: Storage, clock: ManualClock, redis_url: str
) -> None:
    async with served(redis_url, clock) as (_, stubs):
        now = clock.now_ms()
        events = [
            pb.StockEvent(
                event_id="e1",
                location_id="L1",
                sku=sku,
                kind=pb.EVENT_KIND_DELTA,
                qty=5,
                source_time=now - 900,
                state=state,
            )
            for sku, state in (
                ("S1", pb.STOCK_STATE_SELLABLE),
                ("S2", pb.STOCK_STATE_SELLABLE),
                ("S2", pb.STOCK_STATE_RETURNED),
            )
        ]
        for i, e in enumerate(events):
            e.event_id = f"e{i}"
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
        header = pb.CountHeader(
            location_id="L1", count_id="k1", counted_at=now - 100, missing=pb.MISSING_SKUS_ZERO
        )
        lines = [
            pb.CountLine(sku="S1", qty=7),
            pb.CountLine(sku="S1", qty=2, state=pb.STOCK_STATE_DAMAGED),
        ]
        got = await stubs.stock.ReconcileCount(
            iter([pb.ReconcileCountRequest(header=header, lines=lines, end=True)])
        )
        assert (got.changed, got.zeroed) == (2, 1)
        read = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=["S1", "S2"], location_ids=["L1"], states=True)
        )
        levels = {
            lv.sku: (lv.on_hand, lv.damaged, lv.quality_control, lv.returned) for lv in read.levels
        }
        assert levels == {"S1": (7, 2, 0, 0), "S2": (0, 0, 0, 5)}
        # without `states`, nothing of them is read
        plain = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=["S1", "S2"], location_ids=["L1"])
        )
        assert [(lv.on_hand, lv.damaged, lv.returned) for lv in plain.levels] == [
            (7, 0, 0),
            (0, 0, 0),
        ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {
                "kind": pb.EVENT_KIND_MOVE,
                "state": pb.STOCK_STATE_DAMAGED,
                "to_state": pb.STOCK_STATE_DAMAGED,
            },
            "events[0].to_state",
        ),
        (
            {"kind": pb.EVENT_KIND_MOVE, "qty": -2, "state": pb.STOCK_STATE_RETURNED},
            "events[0].qty",
        ),
        ({"to_state": pb.STOCK_STATE_DAMAGED}, "events[0].to_state"),
        ({"state": 9}, "events[0].state"),
        ({"state": pb.STOCK_STATE_DAMAGED, "reservation_id": "r1"}, "events[0].reservation_id"),
    ],
)
async def test_a_bad_state_or_move_is_refused_by_field(
    storage: Storage, clock: ManualClock, redis_url: str, change: dict[str, int | str], field: str
) -> None:
    async with served(redis_url, clock) as (_, stubs):
        event = pb.StockEvent(
            event_id="e1",
            location_id="L1",
            sku="S1",
            kind=pb.EVENT_KIND_DELTA,
            qty=2,
            source_time=clock.now_ms() - 10,
        )
        for name, value in change.items():
            setattr(event, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[event]))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(field), err.value.details()


def test_a_move_must_change_the_state(redis_url: str) -> None:
    with pytest.raises(InvalidArgument, match="to_state"):
        check_event(ev("m", EventKind.MOVE, 1, 5, RETURNED, RETURNED), "e")


async def test_a_zeroing_count_marks_only_sellable_rows(
    storage: Storage, clock: ManualClock
) -> None:
    # given a full count at F that zeroes what it does not list
    now = clock.now_ms()
    await storage.apply_events("L1", [], now, full_count_at=now - 100)
    # when a delta of returned units from before F arrives after it, and one of sellable units
    got = await storage.apply_events(
        "L1",
        [
            ev("d1", EventKind.DELTA, 2, now - 200, RETURNED),
            ev("d2", EventKind.DELTA, 2, now - 200),
        ],
        now,
    )
    # then the returned units count (the count did not zero that state), the sellable are in it
    assert got.outcomes == [EventOutcome.APPLIED, EventOutcome.STALE]
    assert await units(storage) == {SELLABLE: 0, DAMAGED: 0, QC: 0, RETURNED: 2}
