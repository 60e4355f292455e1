"""SourcingService.Allocate over real gRPC: plans from live stock, the plan held atomically
with pick capacity taken and given back, excluded and inactive locations, idempotent
retries, re-planning when stock moves under a plan, and bad input named.

Locations lie due north of a point in London, so their distances are known exactly."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from engine.app import Omnistock
from engine.domain.clock import ManualClock
from engine.domain.model import BasketLine, EventKind, Line, StockEvent
from engine.domain.sourcing import Candidate
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.storage import Storage
from engine.usecases import allocation
from engine.usecases.allocation import Allocator, Order
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, register
from .grpc_helpers import LAT, LON, Stubs, level, place, store

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster


async def allocate(stubs: Stubs, *lines: tuple[str, int], **fields: object) -> pb.AllocateResponse:
    request = pb.AllocateRequest(
        lines=[pb.BasketLine(sku=sku, qty=qty) for sku, qty in lines],
        latitude=LAT,
        longitude=LON,
        **fields,  # type: ignore[arg-type]
    )
    return await stubs.sourcing.Allocate(request)


def plan_of(answer: pb.AllocateResponse) -> dict[str, dict[str, int]]:
    return {s.location.id: {ln.sku: ln.qty for ln in s.lines} for s in answer.shipments}


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def test_a_plan_without_reserve_holds_nothing(stubs: Stubs) -> None:
    # given a near store with one line and a farther store with both
    await place(stubs, [store("near", 2), store("far", 30)],
                {("near", "a"): 5, ("far", "a"): 5, ("far", "b"): 5})  # fmt: skip
    # when an order for both is planned
    answer = await allocate(stubs, ("a", 1), ("b", 1))
    # then one shipment from the store with both, with its distance and cost, nothing held
    assert plan_of(answer) == {"far": {"a": 1, "b": 1}}
    (shipment,) = answer.shipments
    assert shipment.distance_km == pytest.approx(30, abs=1e-6)
    assert answer.total_cost == pytest.approx(5.0 + 0.01 * 30)
    assert answer.attempts == 1 and answer.exact and not answer.HasField("reservation")
    assert (await level(stubs, "far", "a")).reserved == 0


async def test_reserve_holds_exactly_the_plan_and_nothing_when_it_cannot_fill(
    stubs: Stubs,
) -> None:
    await place(stubs, [store("x", 2), store("y", 3)], {("x", "a"): 5, ("y", "b"): 5})
    # when an order that needs both stores is reserved
    answer = await allocate(stubs, ("a", 2), ("b", 1), reserve=True, reservation_id="o-1")
    # then both shipments are held under one reservation, and only them
    assert plan_of(answer) == {"x": {"a": 2}, "y": {"b": 1}}
    assert answer.reservation.state == pb.RESERVATION_STATE_HELD
    held = {(ln.location_id, ln.sku, ln.qty) for ln in answer.reservation.lines}
    assert held == {("x", "a", 2), ("y", "b", 1)}
    assert (await level(stubs, "x", "a")).reserved == 2
    assert (await level(stubs, "y", "b")).reserved == 1
    # and an order that cannot be filled holds nothing anywhere
    short = await allocate(stubs, ("a", 1), ("b", 9), reserve=True, reservation_id="o-2")
    assert not short.HasField("reservation")
    assert [(u.sku, u.qty, u.reason) for u in short.unfilled] == [
        ("b", 9, pb.UNFILLED_REASON_NO_STOCK)
    ]
    assert (await level(stubs, "x", "a")).reserved == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="o-2"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_pick_capacity_is_taken_by_a_held_plan_and_given_back_on_release(
    stubs: Stubs,
) -> None:
    # given a near store that may pick one order a day, and a farther one without limit
    await place(stubs, [store("near", 1, ship_capacity=1), store("far", 50)],
                {("near", "a"): 9, ("far", "a"): 9})  # fmt: skip
    first = await allocate(stubs, ("a", 1), reserve=True, reservation_id="o-1")
    assert plan_of(first) == {"near": {"a": 1}}
    # when its one order is held, the next order goes to the other store
    second = await allocate(stubs, ("a", 1), reserve=True, reservation_id="o-2")
    assert plan_of(second) == {"far": {"a": 1}}
    # and once the first is released, the near store picks again
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="o-1"))
    third = await allocate(stubs, ("a", 1), reserve=True, reservation_id="o-3")
    assert plan_of(third) == {"near": {"a": 1}}
    # a commit keeps the capacity used: the order was picked
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="o-3"))
    fourth = await allocate(stubs, ("a", 1))
    assert plan_of(fourth) == {"far": {"a": 1}}


async def test_an_expired_plan_gives_its_pick_capacity_back(stubs: Stubs) -> None:
    await place(stubs, [store("near", 1, ship_capacity=1), store("far", 50)],
                {("near", "a"): 9, ("far", "a"): 9})  # fmt: skip
    held = await allocate(stubs, ("a", 1), reserve=True, reservation_id="o-1", ttl_seconds=0.2)
    assert plan_of(held) == {"near": {"a": 1}}
    assert plan_of(await allocate(stubs, ("a", 1))) == {"far": {"a": 1}}
    for _ in range(40):  # the sweeper runs every 50 ms here
        await asyncio.sleep(0.1)
        if plan_of(await allocate(stubs, ("a", 1))) == {"near": {"a": 1}}:
            break
    assert plan_of(await allocate(stubs, ("a", 1))) == {"near": {"a": 1}}
    assert (await level(stubs, "near", "a")).reserved == 0


async def test_excluded_inactive_and_non_shipping_locations_are_never_chosen(
    stubs: Stubs,
) -> None:
    sites = [
        store("excluded", 1),
        store("inactive", 2, active=False),
        store("pickup-only", 3, ship_enabled=False),
        store("far", 60),
        store("dc", 4, type=pb.LOCATION_TYPE_DC),
    ]
    await place(stubs, sites, {(s.id, "a"): 9 for s in sites})
    answer = await allocate(stubs, ("a", 1), excluded_location_ids=["excluded"],
                            location_types=[pb.LOCATION_TYPE_STORE])  # fmt: skip
    assert plan_of(answer) == {"far": {"a": 1}}
    # within a maximum distance nothing is left
    near_only = await allocate(
        stubs, ("a", 1), excluded_location_ids=["excluded"],
        location_types=[pb.LOCATION_TYPE_STORE], max_distance_km=50,
    )  # fmt: skip
    assert plan_of(near_only) == {}
    assert near_only.unfilled[0].reason == pb.UNFILLED_REASON_NO_STOCK


async def test_a_retried_allocate_answers_the_plan_it_held(stubs: Stubs) -> None:
    await place(stubs, [store("x", 2), store("y", 9)], {("x", "a"): 3, ("y", "a"): 5})
    first = await allocate(stubs, ("a", 1), reserve=True, reservation_id="o-1")
    # when the same call comes again (a fresh plan would now pick y: x is down to its
    # buffer of 2, as o-1 holds one of its 3 units)
    again = await allocate(stubs, ("a", 1), reserve=True, reservation_id="o-1")
    # then it answers the same plan and holds nothing more
    assert plan_of(again) == plan_of(first) == {"x": {"a": 1}}
    assert again.attempts == 0 and again.total_cost == pytest.approx(first.total_cost)
    assert (await level(stubs, "y", "a")).reserved == 0
    # the same id for another order is taken
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await allocate(stubs, ("a", 2), reserve=True, reservation_id="o-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_plan_whose_stock_moves_before_the_hold_is_made_again(
    server: Omnistock, stubs: Stubs
) -> None:
    # given two stores, and a competitor who takes the near one's stock right after the
    # allocator read it (the first read only)
    await place(stubs, [store("near", 1), store("far", 20)], {("near", "a"): 2, ("far", "a"): 2})

    class Raced(Allocator):
        reads = 0

        async def candidates(self, order: Order) -> list[Candidate]:
            seen = await super().candidates(order)
            Raced.reads += 1
            if Raced.reads == 1:
                taken = await server.reservations.reserve("rival", [Line("near", "a", 2)])
                assert taken.ok
            return seen

    allocator = Raced(server.storage, server.locations, server.reservations)
    order = Order((BasketLine("a", 2),), LAT, LON, reserve=True, reservation_id="o-1")
    # when the order is allocated and held
    result = await allocator.allocate(order)
    # then the first hold failed, the order was planned again, and the far store holds it
    assert result.attempts == 2 and len(result.retries) == 1
    assert "near: a short, 0 of 2" in result.retries[0]
    assert result.reservation is not None
    assert [(ln.location, ln.qty) for ln in result.reservation.lines] == [("far", 2)]


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("lines", {"lines": []}),
        ("lines[0].qty", {"lines": [pb.BasketLine(sku="a", qty=0)]}),
        ("lines[1].sku", {"lines": [pb.BasketLine(sku="a", qty=1), pb.BasketLine(sku="a", qty=1)]}),
        ("latitude", {"latitude": 91.0}),
        ("max_shipments", {"max_shipments": 11}),
        ("max_distance_km", {"max_distance_km": -1.0}),
        ("cost.cost_per_km", {"cost": pb.CostModel(cost_per_km=-0.5)}),
        ("reservation_id", {"reserve": True}),
        ("location_types[0]", {"location_types": [99]}),
    ],
    ids=[
        "no-lines",
        "zero-qty",
        "repeated-sku",
        "latitude",
        "max-shipments",
        "max-distance",
        "cost",
        "reserve-without-id",
        "type",
    ],
)
async def test_bad_orders_are_named(stubs: Stubs, field: str, fields: dict[str, object]) -> None:
    values: dict[str, object] = {
        "lines": [pb.BasketLine(sku="a", qty=1)],
        "latitude": LAT,
        "longitude": LON,
    }
    values.update(fields)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.sourcing.Allocate(pb.AllocateRequest(**values))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()


async def test_a_long_order_reads_fewer_candidates_within_the_row_limit(
    server: Omnistock, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given three stores, and a row limit that lets a 2-line order read 2 of them
    await place(stubs, [store("a", 1), store("b", 2), store("c", 3)],
                {(s, k): 5 for s in "abc" for k in ("x", "y")})  # fmt: skip
    monkeypatch.setattr(allocation, "MAX_ROWS", 4)
    allocator = Allocator(server.storage, server.locations, server.reservations)
    two = Order((BasketLine("x", 1), BasketLine("y", 1)), LAT, LON)
    one = Order((BasketLine("x", 1),), LAT, LON)
    # then the nearest two are read for it, and all three for a 1-line order
    assert [c.location.id for c in await allocator.candidates(two)] == ["a", "b"]
    assert [c.location.id for c in await allocator.candidates(one)] == ["a", "b", "c"]


async def test_a_hold_refused_for_pick_capacity_is_counted_as_full_not_short(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given a store with stock whose pick capacity for today is 0
    now = clock.now_ms()
    event = StockEvent("c1", "s", "a", EventKind.COUNT, 9, now - 1)
    await storage.apply_events("s", [event], now)
    await register(reservations, "s")
    # when a plan's hold asks for one of its orders
    result = await reservations.reserve("o-1", [Line("s", "a", 1)], capacity={"s": 0})
    # then nothing is held, the location is named full, and the metric says so
    assert not result.ok and result.full == ("s",) and result.shortfalls == ()
    samples = reservations.metrics.registry
    assert samples.get_sample_value("omnistock_holds_total", {"outcome": "full"}) == 1
    assert samples.get_sample_value("omnistock_holds_total", {"outcome": "short"}) is None
    (row,) = await storage.rows([("s", "a")])
    assert row.reserved == 0
