"""The gRPC service end to end over a real server and a real Redis-compatible store."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.app import Omnistock, create_server
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import ON_BOTH, all_keys, settings_for
from .grpc_helpers import Stubs, count, level, line, location, stock_up

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def test_reserve_commit_and_read_availability(stubs: Stubs) -> None:
    # given 10 units of a sku at one store
    await stock_up(stubs, {("s1", "sku-1"): 10})
    # when 3 are reserved and committed
    resp = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "sku-1", 3)])
    )
    assert resp.reservation.state == pb.RESERVATION_STATE_HELD
    assert (await level(stubs, "s1", "sku-1")).available == 7
    committed = await stubs.reservations.Commit(pb.CommitRequest(reservation_id="r1"))
    # then the sale left on_hand and reserved down by 3
    assert committed.state == pb.RESERVATION_STATE_COMMITTED
    row = await level(stubs, "s1", "sku-1")
    assert (row.on_hand, row.reserved, row.available) == (7, 0, 7)


async def test_insufficient_stock_is_an_answer_naming_every_short_line(stubs: Stubs) -> None:
    await stock_up(stubs, {("s1", "a"): 2, ("s1", "b"): 5, ("s2", "c"): 1})
    resp = await stubs.reservations.Reserve(
        pb.ReserveRequest(
            reservation_id="r1",
            lines=[line("s1", "a", 3), line("s1", "b", 5), line("s2", "c", 4)],
        )
    )
    assert not resp.HasField("reservation")
    short = {(s.location_id, s.sku): (s.requested, s.available) for s in resp.shortfalls}
    assert short == {("s1", "a"): (3, 2), ("s2", "c"): (4, 1)}
    assert (await level(stubs, "s1", "b")).reserved == 0


async def test_release_extend_and_get_reservation(stubs: Stubs) -> None:
    await stock_up(stubs, {("s1", "a"): 5})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 2)], ttl_seconds=30)
    )
    before = await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="r1"))
    extended = await stubs.reservations.Extend(
        pb.ExtendRequest(reservation_id="r1", ttl_seconds=600)
    )
    assert extended.expires_at > before.expires_at + 500_000
    released = await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="r1"))
    assert released.state == pb.RESERVATION_STATE_RELEASED
    assert (await level(stubs, "s1", "a")).available == 5
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.reservations.Commit(pb.CommitRequest(reservation_id="r1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_reservation_is_not_found(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_availability_by_location_type_skips_empty_rows(stubs: Stubs) -> None:
    await stock_up(stubs, {("s1", "a"): 4, ("s2", "a"): 0})
    resp = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["a"], location_types=[pb.LOCATION_TYPE_STORE])
    )
    assert [(lv.location_id, lv.available) for lv in resp.levels] == [("s1", 4)]


async def test_events_report_their_outcomes_in_request_order(stubs: Stubs) -> None:
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("s1")]))
    resp = await stubs.stock.ApplyEvents(
        pb.ApplyEventsRequest(events=[count("e1", "s1", "a", 5), count("e1", "s1", "a", 5)])
    )
    assert list(resp.outcomes) == [pb.EVENT_OUTCOME_APPLIED, pb.EVENT_OUTCOME_DUPLICATE]


async def test_safety_stock_lowers_availability(stubs: Stubs) -> None:
    await stock_up(stubs, {("s1", "a"): 5})
    await stubs.stock.SetSafetyStock(
        pb.SetSafetyStockRequest(entries=[pb.SafetyStockEntry(location_id="s1", sku="a", qty=2)])
    )
    row = await level(stubs, "s1", "a")
    assert (row.available, row.safety_stock) == (3, 2)


async def test_health_and_reflection_are_served(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    got = await health.Check(
        health_pb2.HealthCheckRequest(service="omnistock.v1.ReservationService")
    )
    assert got.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> list[str]:
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for r in responses:
            return [s.name for s in r.list_services_response.service]
        return []

    names = await ask()
    assert "omnistock.v1.AvailabilityService" in names and "grpc.health.v1.Health" in names


async def test_metrics_count_rpcs_and_holds(stubs: Stubs, server: Omnistock) -> None:
    await stock_up(stubs, {("s1", "a"): 1})
    for rid in ("r1", "r2"):
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line("s1", "a", 1)])
        )
    reg = server.metrics.registry
    assert reg.get_sample_value("omnistock_holds_total", {"outcome": "held"}) == 1
    assert reg.get_sample_value("omnistock_holds_total", {"outcome": "short"}) == 1
    n = reg.get_sample_value("omnistock_rpc_seconds_count", {"method": "Reserve", "code": "OK"})
    assert n == 2


BAD_RESERVES = [
    ("reservation_id", pb.ReserveRequest(reservation_id="", lines=[line("s1", "a", 1)])),
    ("reservation_id", pb.ReserveRequest(reservation_id="x" * 129, lines=[line("s1", "a", 1)])),
    ("reservation_id", pb.ReserveRequest(reservation_id="a b", lines=[line("s1", "a", 1)])),
    ("lines", pb.ReserveRequest(reservation_id="r", lines=[])),
    ("lines[0].qty", pb.ReserveRequest(reservation_id="r", lines=[line("s1", "a", 0)])),
    ("lines[0].qty", pb.ReserveRequest(reservation_id="r", lines=[line("s1", "a", -3)])),
    ("lines[0].sku", pb.ReserveRequest(reservation_id="r", lines=[line("s1", "", 1)])),
    ("lines[0].location_id", pb.ReserveRequest(reservation_id="r", lines=[line("{s1}", "a", 1)])),
    ("location_id", pb.ReserveRequest(reservation_id="r", lines=[line("nowhere", "a", 1)])),
    (
        "lines",
        pb.ReserveRequest(reservation_id="r", lines=[line("s1", f"k{i}", 1) for i in range(201)]),
    ),
    (
        "ttl_seconds",
        pb.ReserveRequest(reservation_id="r", lines=[line("s1", "a", 1)], ttl_seconds=-1),
    ),
    (
        "ttl_seconds",
        pb.ReserveRequest(reservation_id="r", lines=[line("s1", "a", 1)], ttl_seconds=float("nan")),
    ),
]


async def dump(redis: aioredis.Redis) -> dict[bytes, bytes]:
    return {key: await redis.dump(key) for key in await all_keys(redis)}


@pytest.mark.parametrize(("field", "request_"), BAD_RESERVES)
async def test_bad_reserve_is_invalid_argument_and_changes_nothing(
    stubs: Stubs, redis: aioredis.Redis, field: str, request_: pb.ReserveRequest
) -> None:
    await stock_up(stubs, {("s1", "a"): 5})
    before = await dump(redis)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.reservations.Reserve(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert await dump(redis) == before


BAD_LOCATIONS = [
    ("locations[1].latitude", location("s9", lat=float("nan"))),
    ("locations[1].latitude", location("s9", lat=91.0)),
    ("locations[1].longitude", location("s9", lon=float("inf"))),
    ("locations[1].id", location("")),
    ("locations[1].type", pb.Location(id="s9", latitude=1.0, longitude=1.0)),
    ("locations[1].country", pb.Location(id="s9", type=1, country="UK")),
    ("locations[1].country", pb.Location(id="s9", type=1, country="gb")),
    ("locations[1].region", pb.Location(id="s9", type=1, country="GB", region="North West")),
]


@pytest.mark.parametrize(("field", "loc"), BAD_LOCATIONS)
async def test_bad_location_is_invalid_argument_and_changes_nothing(
    stubs: Stubs, redis: aioredis.Redis, field: str, loc: pb.Location
) -> None:
    await stock_up(stubs, {("s1", "a"): 5})
    before = await dump(redis)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.UpsertLocations(
            pb.UpsertLocationsRequest(locations=[location("s8"), loc])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert await dump(redis) == before


BAD_EVENTS = [
    ("events[1].event_id", pb.StockEvent(location_id="s1", sku="a", kind=1, qty=1, source_time=5)),
    (
        "events[1].kind",
        pb.StockEvent(event_id="e", location_id="s1", sku="a", qty=1, source_time=5),
    ),
    (
        "events[1].source_time",
        pb.StockEvent(event_id="e", location_id="s1", sku="a", kind=1, qty=1),
    ),
    (
        "events[1].qty",
        pb.StockEvent(event_id="e", location_id="s1", sku="a", kind=1, qty=-1, source_time=5),
    ),
    (
        "events[1].qty",
        pb.StockEvent(event_id="e", location_id="s1", sku="a", kind=2, qty=0, source_time=5),
    ),
    (
        "location_id",
        pb.StockEvent(event_id="e", location_id="zz", sku="a", kind=2, qty=1, source_time=5),
    ),
]


@pytest.mark.parametrize(("field", "event"), BAD_EVENTS)
async def test_bad_event_batch_is_invalid_argument_and_changes_nothing(
    stubs: Stubs, redis: aioredis.Redis, field: str, event: pb.StockEvent
) -> None:
    await stock_up(stubs, {("s1", "a"): 5})
    before = await dump(redis)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[count("ok", "s1", "a", 9), event])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert await dump(redis) == before


async def test_bad_availability_query_names_the_field(stubs: Stubs) -> None:
    await stock_up(stubs, {("s1", "a"): 5})
    cases = [
        ("skus", pb.GetAvailabilityRequest(location_ids=["s1"])),
        ("skus[0]", pb.GetAvailabilityRequest(skus=[""], location_ids=["s1"])),
        ("location_ids", pb.GetAvailabilityRequest(skus=["a"], location_ids=["nowhere"])),
        ("location_types[0]", pb.GetAvailabilityRequest(skus=["a"], location_types=[9])),
    ]
    for field, req in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.availability.GetAvailability(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or ""), field


async def test_metrics_are_served_over_http_on_their_own_port(
    redis: aioredis.Redis, redis_url: str
) -> None:
    import urllib.request

    from engine.app import create_server
    from engine.store.loopback import free_port

    from .conftest import settings_for

    port = free_port()
    app = create_server(settings_for(redis_url, metrics_port=port))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            await stock_up(Stubs(ch), {("s1", "a"): 1})
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        text = body.decode()
        assert 'omnistock_rpc_seconds_count{code="OK",method="ApplyEvents"} 1.0' in text
        assert "omnistock_redis_up" in text
    finally:
        await app.stop(grace=1.0)


async def test_a_location_added_through_another_process_is_known_there_at_once(
    stubs: Stubs, redis_url: str
) -> None:
    # given a second server process on the same Redis, its location cache just loaded
    other = create_server(settings_for(redis_url))
    await other.start()
    try:
        await other.locations.reload()
        # when a store is added through the first process
        await stock_up(stubs, {("new-store", "a"): 3})
        # then the second takes a hold there straight away
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            got = await Stubs(channel).reservations.Reserve(
                pb.ReserveRequest(reservation_id="r1", lines=[line("new-store", "a", 2)])
            )
        assert got.reservation.state == pb.RESERVATION_STATE_HELD
    finally:
        await other.stop(grace=0.5)


async def test_a_location_keeps_its_country_and_region(stubs: Stubs) -> None:
    # given a store in Manchester, and one stored before locations had a country
    store = location("s1")
    store.country, store.region = "GB", "manchester"
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[store, location("s2")]))
    # when they are read back
    got = [
        (await stubs.operator.GetLocation(pb.GetLocationRequest(location_id=loc))).location
        for loc in ("s1", "s2")
    ]
    # then each has what it was given ("" where nothing was)
    assert [(loc.country, loc.region) for loc in got] == [("GB", "manchester"), ("", "")]
