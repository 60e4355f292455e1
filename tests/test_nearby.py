"""FindNearby over real gRPC: distance order, radius edges, whole and partial baskets,
fulfilment and type filters, inactive locations, holds and safety stock, bad input.

Stores are placed due north of a point in London, so each one's great-circle distance is
exactly known: along a meridian it is R x the latitude difference (in radians)."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from engine.app import create_server
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import ON_BOTH, settings_for
from .grpc_helpers import LAT, LON, Stubs, line, place, store

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster


def basket(*lines: tuple[str, int]) -> list[pb.BasketLine]:
    return [pb.BasketLine(sku=sku, qty=qty) for sku, qty in lines]


async def find(stubs: Stubs, *lines: tuple[str, int], **fields: object) -> pb.FindNearbyResponse:
    values: dict[str, object] = {"latitude": LAT, "longitude": LON, "radius_km": 50.0}
    values.update(fields)
    request = pb.FindNearbyRequest(lines=basket(*lines), **values)  # type: ignore[arg-type]
    return await stubs.availability.FindNearby(request)


def ids(answer: pb.FindNearbyResponse) -> list[str]:
    return [n.location.id for n in answer.locations]


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def test_nearest_first_with_distance_details_and_quantities(stubs: Stubs) -> None:
    # given three stores 12, 1 and 5 km away, each with some units of "a"
    await place(
        stubs,
        [store("far", 12), store("near", 1), store("mid", 5)],
        {("far", "a"): 9, ("near", "a"): 3, ("mid", "a"): 4},
    )
    # when asked for 2 of "a" within 50 km
    got = await find(stubs, ("a", 2))
    # then nearest first, with the great-circle distance, the store and its quantities
    assert ids(got) == ["near", "mid", "far"]
    assert [n.distance_km for n in got.locations] == pytest.approx([1, 5, 12], abs=1e-6)
    first = got.locations[0]
    assert first.location.name == "Store near" and first.location.pickup_enabled
    assert [(x.sku, x.requested, x.available) for x in first.lines] == [("a", 2, 3)]
    assert first.fills_basket and first.lines_filled == 1 and first.units_filled == 2
    assert got.locations_considered == 3


async def test_the_radius_includes_its_edge_and_nothing_beyond(stubs: Stubs) -> None:
    await place(stubs, [store("edge", 7.5), store("beyond", 7.6)], {("edge", "a"): 1})
    assert ids(await find(stubs, ("a", 1), radius_km=7.5)) == ["edge"]
    assert ids(await find(stubs, ("a", 1), radius_km=7.5 - 1e-5)) == []  # 1 cm short


async def test_a_whole_basket_and_a_partial_one(stubs: Stubs) -> None:
    # given a basket of 2 "a" and 1 "b": "b-only" (nearest) and "a-only" fill one line each,
    # "all" fills it, "one-each" has 1 of each
    await place(
        stubs,
        [store("b-only", 1), store("a-only", 2), store("all", 3), store("one-each", 4)],
        {
            ("b-only", "b"): 5,
            ("a-only", "a"): 5,
            ("all", "a"): 2,
            ("all", "b"): 1,
            ("one-each", "a"): 1,
            ("one-each", "b"): 1,
        },
    )
    # then the whole-basket search finds the one store that fills it
    whole = await find(stubs, ("a", 2), ("b", 1))
    assert ids(whole) == ["all"]
    # and the partial one ranks the rest by lines filled, then units, then distance
    part = await find(stubs, ("a", 2), ("b", 1), partial=True)
    assert ids(part) == ["all", "a-only", "one-each", "b-only"]
    assert [(n.fills_basket, n.lines_filled, n.units_filled) for n in part.locations] == [
        (True, 2, 3),
        (False, 1, 2),
        (False, 1, 2),
        (False, 1, 1),
    ]


async def test_pickup_ship_and_type_filters(stubs: Stubs) -> None:
    await place(
        stubs,
        [
            store("shop", 1),
            store("no-pickup", 2, pickup_enabled=False),
            store("no-ship", 3, ship_enabled=False),
            store("dc", 4, type=pb.LOCATION_TYPE_DC, pickup_enabled=False),
        ],
        {(loc, "a"): 5 for loc in ("shop", "no-pickup", "no-ship", "dc")},
    )
    assert ids(await find(stubs, ("a", 1))) == ["shop", "no-pickup", "no-ship", "dc"]
    pickup = await find(stubs, ("a", 1), fulfilment=pb.FULFILMENT_PICKUP)
    assert ids(pickup) == ["shop", "no-ship"]
    assert ids(await find(stubs, ("a", 1), fulfilment=pb.FULFILMENT_SHIP)) == [
        "shop",
        "no-pickup",
        "dc",
    ]
    dcs = await find(stubs, ("a", 1), location_types=[pb.LOCATION_TYPE_DC])
    assert ids(dcs) == ["dc"]


async def test_inactive_locations_are_left_out(stubs: Stubs) -> None:
    await place(
        stubs,
        [store("open", 2), store("closed", 1, active=False)],
        {
            ("open", "a"): 1,
            ("closed", "a"): 9,
        },
    )
    assert ids(await find(stubs, ("a", 1), partial=True)) == ["open"]


async def test_held_units_and_safety_stock_are_not_available(stubs: Stubs) -> None:
    # given 2 units at "held" and 3 at "kept", of which 2 are safety stock
    await place(stubs, [store("held", 1), store("kept", 2)], {("held", "a"): 2, ("kept", "a"): 3})
    await stubs.stock.SetSafetyStock(
        pb.SetSafetyStockRequest(entries=[pb.SafetyStockEntry(location_id="kept", sku="a", qty=2)])
    )
    assert ids(await find(stubs, ("a", 1))) == ["held", "kept"]
    # when a reservation holds the 2 units at "held"
    held = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("held", "a", 2)])
    )
    assert held.reservation.state == pb.RESERVATION_STATE_HELD
    # then "held" has nothing left, and "kept" has 1 to offer
    assert ids(await find(stubs, ("a", 1), partial=True)) == ["kept"]
    assert ids(await find(stubs, ("a", 2), partial=True)) == ["kept"]
    assert ids(await find(stubs, ("a", 2))) == []


async def test_the_limit_and_stores_found_past_the_first_round(stubs: Stubs) -> None:
    # given 40 stores 1..40 km away, of which only the 35th and later have the sku
    stores = [store(f"s{k:02d}", k) for k in range(1, 41)]
    await place(stubs, stores, {(f"s{k:02d}", "a"): 1 for k in range(35, 41)})
    # then a search reads on past its first round of 32 stores, and stops at the limit
    got = await find(stubs, ("a", 1), limit=3)
    assert ids(got) == ["s35", "s36", "s37"]
    assert got.locations_considered == 40


async def test_a_store_added_through_another_process_is_searched_within_a_second_or_two(
    stubs: Stubs, redis_url: str
) -> None:
    # given a second server process whose location cache is loaded and checked
    other = create_server(settings_for(redis_url))
    await other.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            there = Stubs(channel)
            assert ids(await find(there, ("a", 1))) == []
            # when a store is added through the first process
            await place(stubs, [store("new", 3)], {("new", "a"): 1})
            # then the second finds it once its cache sees the change (checked each second)
            for _ in range(60):  # 3 s at most
                if ids(await find(there, ("a", 1))):
                    break
                await asyncio.sleep(0.05)
            assert ids(await find(there, ("a", 1))) == ["new"]
    finally:
        await other.stop(grace=0.5)


BAD = [
    ("latitude", {"latitude": math.nan}),
    ("latitude", {"latitude": 91.0}),
    ("longitude", {"longitude": -180.5}),
    ("radius_km", {"radius_km": 0.0}),
    ("radius_km", {"radius_km": -1.0}),
    ("radius_km", {"radius_km": math.inf}),
    ("radius_km", {"radius_km": 25_000.0}),
    ("limit", {"limit": 101}),
    ("fulfilment", {"fulfilment": 7}),
    ("location_types[0]", {"location_types": [9]}),
]


@pytest.mark.parametrize(("field", "fields"), BAD, ids=[f"{f}={v}" for f, v in BAD])
async def test_bad_query_fields_are_named(
    stubs: Stubs, field: str, fields: dict[str, object]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await find(stubs, ("a", 1), **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


@pytest.mark.parametrize(
    ("field", "lines"),
    [
        ("lines", []),
        ("lines[0].qty", [("a", 0)]),
        ("lines[0].sku", [("", 1)]),
        ("lines[1].sku", [("a", 1), ("a", 2)]),
        ("lines", [(f"s{i}", 1) for i in range(201)]),
    ],
    ids=["empty", "zero-qty", "empty-sku", "sku-twice", "too-many"],
)
async def test_bad_baskets_are_named(
    stubs: Stubs, field: str, lines: list[tuple[str, int]]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await find(stubs, *lines)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field)
