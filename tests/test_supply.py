"""Future supply (UpsertSupply) and promises by date (GetPromise), issue 17 points 4 and 5:
set, updated, cancelled by id, refused by field, changing nothing when refused; and each
row's promise checked against a brute-force model over random supply, holds and dates.
On one Redis and on a cluster."""

from __future__ import annotations

import itertools

import grpc
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

from engine.domain.clock import ManualClock
from engine.domain.model import EventKind, Line, StockEvent
from engine.domain.supply import DAY_MS, Supply, SupplyOutcome, units_by
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.networks import Networks
from engine.usecases.parts import Timing
from engine.usecases.reservations import Reservations
from engine.usecases.supply import Supplies

from .conftest import ON_BOTH, served, store
from .grpc_helpers import Stubs, count, line, location

pytestmark = [ON_BOTH, pytest.mark.usefixtures("redis")]  # a flushed store each
CREATED, UPDATED = pb.SUPPLY_OUTCOME_CREATED, pb.SUPPLY_OUTCOME_UPDATED
UNCHANGED, CANCELLED = pb.SUPPLY_OUTCOME_UNCHANGED, pb.SUPPLY_OUTCOME_CANCELLED


def supply(
    sid: str, qty: int, at: int, loc: str = "L1", sku: str = "S1", **kw: object
) -> pb.Supply:
    return pb.Supply(supply_id=sid, location_id=loc, sku=sku, qty=qty, expected_at=at, **kw)  # type: ignore[arg-type]


async def upsert(stubs: Stubs, *supplies: pb.Supply) -> list[int]:
    got = await stubs.stock.UpsertSupply(pb.UpsertSupplyRequest(supplies=supplies))
    return list(got.outcomes)


async def promise_of(stubs: Stubs, loc: str = "L1", sku: str = "S1", **kw: object) -> pb.Promise:
    request = pb.GetPromiseRequest(skus=[sku], location_ids=[loc], **kw)  # type: ignore[arg-type]
    (p,) = (await stubs.availability.GetPromise(request)).promises
    return p


def steps(p: pb.Promise) -> list[tuple[int, int]]:
    return [(s.at, s.units) for s in p.steps]


async def test_supply_is_set_updated_and_cancelled_by_id(redis_url: str) -> None:
    clock = ManualClock()
    now = clock.now
    async with served(redis_url, clock) as (_, stubs):
        await stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[count("c1", "L1", "S1", 10, now - 1000)])
        )
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="r1", lines=[line("L1", "S1", 4)], ttl_seconds=600)
        )
        day3, day10 = now + 3 * DAY_MS, now + 10 * DAY_MS
        assert await upsert(stubs, supply("po-1", 5, day3), supply("po-2", 7, day10)) == [
            CREATED,
            CREATED,
        ]
        assert await upsert(stubs, supply("po-1", 5, day3)) == [UNCHANGED]  # a retry
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.incoming) == (6, [(day3, 11), (day10, 18)], 12)
        # po-2 is later and smaller; po-1 is cancelled and stays so
        assert await upsert(stubs, supply("po-2", 3, now + 40 * DAY_MS)) == [UPDATED]
        assert await upsert(stubs, supply("po-1", 0, 0, cancel=True)) == [CANCELLED]
        assert await upsert(stubs, supply("po-1", 5, day3)) == [CANCELLED]
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.incoming) == (6, [], 0)  # po-2 past 30 days
        p = await promise_of(stubs, horizon_days=60)
        assert steps(p) == [(now + 40 * DAY_MS, 9)]


async def test_a_short_row_takes_its_shortfall_from_the_first_supply(redis_url: str) -> None:
    clock = ManualClock()
    now = clock.now
    async with served(redis_url, clock) as (_, stubs):
        await stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[count("c1", "L1", "S1", 4, now - 2000)])
        )
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="r1", lines=[line("L1", "S1", 4)], ttl_seconds=600)
        )
        await stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[count("c2", "L1", "S1", 1, now - 1000)])
        )  # three of the four held units are gone: the row is short by 3
        await upsert(stubs, supply("asn-1", 5, now + DAY_MS, kind=pb.SUPPLY_KIND_ASN))
        p = await promise_of(stubs)
        assert (p.available_now, steps(p)) == (0, [(now + DAY_MS, 2)])


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (supply("", 1, 1), "supplies[0].supply_id"),
        (supply("a b", 1, 1), "supplies[0].supply_id"),
        (supply("po", 0, 1), "supplies[0].qty"),
        (supply("po", 1_000_000_001, 1), "supplies[0].qty"),
        (supply("po", 1, 0), "supplies[0].expected_at"),
        (supply("po", 1, -DAY_MS - 1), "supplies[0].expected_at"),  # past: more than a day
        (supply("po", 1, 800 * DAY_MS), "supplies[0].expected_at"),  # beyond two years
        (supply("po", 1, 1, sku=""), "supplies[0].sku"),
        (supply("po", 1, 1, loc="nowhere"), "supplies[0].location_id"),
        (supply("po", 1, 1, kind=99), "supplies[0].kind"),
        (supply("ok", 1, 1), "supplies[0].supply_id"),  # given twice
    ],
)
async def test_bad_supply_is_refused_by_field(redis_url: str, bad: pb.Supply, field: str) -> None:
    clock = ManualClock()
    bad = pb.Supply(
        location_id=bad.location_id,
        sku=bad.sku,
        qty=bad.qty,
        kind=bad.kind,
        supply_id=bad.supply_id,
        expected_at=bad.expected_at and bad.expected_at + clock.now,
    )  # given from now
    async with served(redis_url, clock) as (_, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upsert(stubs, supply("ok", 1, clock.now + DAY_MS), bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(field.replace("[0]", "[1]")), (
            err.value.details()
        )
        p = await promise_of(stubs)
        assert p.incoming == 0  # the good one was not set either


async def test_a_supply_id_keeps_its_sku_and_a_refused_call_changes_nothing(
    redis_url: str,
) -> None:
    clock = ManualClock()
    soon = clock.now + DAY_MS
    async with served(redis_url, clock) as (_, stubs):
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L2")]))
        await upsert(stubs, supply("po-1", 5, soon, loc="L2"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upsert(
                stubs, supply("po-9", 2, soon), supply("po-1", 5, soon, loc="L2", sku="S2")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("supplies[1].sku: supply 'po-1' at 'L2'")
        assert (await promise_of(stubs)).incoming == 0  # po-9 at L1: not set
        assert (await promise_of(stubs, "L2")).incoming == 5
        # the same id at another location is another supply
        assert await upsert(stubs, supply("po-1", 3, soon, sku="S2")) == [CREATED]


async def test_a_row_has_at_most_its_open_supplies(redis_url: str) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        many = [supply(f"po-{i}", 1, clock.now + DAY_MS) for i in range(201)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upsert(stubs, *many)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await promise_of(stubs)).incoming == 0
        assert set(await upsert(stubs, *many[:200])) == {CREATED}


async def test_a_network_promise_sums_its_locations(redis_url: str) -> None:
    clock = ManualClock()
    now = clock.now
    async with served(redis_url, clock) as (_, stubs):
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L2")]))
        net = pb.Network(name="both", location_ids=["L1", "L2"])
        await stubs.stock.UpsertNetworks(pb.UpsertNetworksRequest(networks=[net]))
        events = [count("c1", "L1", "S1", 3, now - 1000), count("c2", "L2", "S1", 2, now - 1000)]
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
        await upsert(
            stubs, supply("a", 4, now + DAY_MS), supply("b", 1, now + 2 * DAY_MS, loc="L2")
        )
        got = await stubs.availability.GetPromise(pb.GetPromiseRequest(skus=["S1"], network="both"))
        assert [p.location_id for p in got.promises] == ["L1", "L2"]
        (total,) = got.network_totals
        assert (total.available_now, steps(total)) == (
            5,
            [(now + DAY_MS, 9), (now + 2 * DAY_MS, 10)],
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.availability.GetPromise(
                pb.GetPromiseRequest(skus=["S1"], location_ids=["L1"], horizon_days=366)
            )
        assert (err.value.details() or "").startswith("horizon_days:")


# -- the brute-force model ------------------------------------------------------------------

EXAMPLES = itertools.count()
TIMING = Timing(default_ttl_ms=60_000, saga_timeout_ms=5_000)
supplies_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),  # ids collide: updates and cancels
        st.integers(1, 20),  # qty
        # when, from now: overdue up to a day, or in 40 days; often on a day's boundary,
        # the end of the horizon's among them
        st.integers(-DAY_MS + 1, 40 * DAY_MS) | st.integers(0, 45).map(lambda d: d * DAY_MS),
        st.booleans(),  # cancel
    ),
    max_size=8,
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    on_hand=st.integers(0, 30),
    safety=st.integers(0, 5),
    holds=st.lists(st.integers(1, 10), max_size=4),
    drop=st.integers(0, 20),
    changes=supplies_st,
    horizon=st.integers(1, 45),
    probes=st.lists(st.integers(0, 46 * DAY_MS), max_size=5),
)
@example(  # supply due at the horizon's very end is in it; a millisecond later, not
    on_hand=5,
    safety=0,
    holds=[],
    drop=0,
    changes=[("a", 3, 30 * DAY_MS, False), ("b", 4, 30 * DAY_MS + 1, False)],
    horizon=30,
    probes=[],
)
async def test_promise_equals_a_brute_force_model(
    storage: Storage,
    on_hand: int,
    safety: int,
    holds: list[int],
    drop: int,
    changes: list[tuple[str, int, int, bool]],
    horizon: int,
    probes: list[int],
) -> None:
    # given a row of its own: counted, held, counted down (perhaps short), with supply
    clock = ManualClock()
    now = clock.now
    loc = f"P{next(EXAMPLES)}"
    registry = LocationRegistry(storage)
    await registry.upsert([store(loc)])
    reservations = Reservations(storage, registry, clock, TIMING, Metrics())
    supplies = Supplies(
        storage, registry, Networks(storage, registry, reservations.channels), clock
    )
    await storage.apply_events(loc, [_count(loc, on_hand, now - 3000)], now)
    await storage.set_safety_stock(loc, [("S", safety)])
    for i, qty in enumerate(holds):
        await reservations.reserve(f"{loc}-h{i}", [Line(loc, "S", qty)], 600)
    await storage.apply_events(loc, [_count(loc, max(0, on_hand - drop), now - 1000, "2")], now)
    model: dict[str, tuple[int, int] | None] = {}
    for sid, qty, when, cancel in changes:
        s = Supply(sid, loc, "S", qty, now + when, cancel=cancel)
        (outcome,) = await supplies.upsert([s])
        if cancel or (sid in model and model[sid] is None):
            model[sid] = None
            assert outcome is SupplyOutcome.CANCELLED
        else:
            model[sid] = (qty, now + when)
    # when
    got = await supplies.promise(["S"], [loc], horizon_days=horizon)
    (p,) = got.promises
    # then: at every instant that matters, what the model says by then
    (row,) = await storage.rows([(loc, "S")])
    base = row.on_hand - row.reserved - row.safety_stock
    end = now + horizon * DAY_MS
    live = [v for v in model.values() if v is not None and v[1] <= end]
    assert p.available_now == max(0, base)
    assert p.incoming == sum(q for q, _ in live)
    assert p.overdue == sum(q for q, at in live if at < now)
    times = {now, end, *(at for _, at in live), *(at + d for _, at in live for d in (-1, 1))}
    times |= {now + t for t in probes} | {now + d * DAY_MS for d in range(horizon + 1)}
    for t in sorted(x for x in times if now <= x <= end):
        brute = max(0, base + sum(q for q, at in live if at <= t))
        assert units_by(p, t) == brute, (t - now, p)


def _count(loc: str, qty: int, at: int, suffix: str = "1") -> StockEvent:
    return StockEvent(f"{loc}-c{suffix}", loc, "S", EventKind.COUNT, qty, at)
