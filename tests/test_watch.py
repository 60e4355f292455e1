"""WatchAvailability over real gRPC: a watcher sees another client's holds, and every other
kind of write of its rows, with growing versions, and nothing of the locations and skus it
did not choose. (How soon: bench/RESULTS.md.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from engine.api.availability import LIGHT_OPENING, OPENINGS_AT_ONCE
from engine.app import Omnistock
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import ON_BOTH
from .grpc_helpers import Stubs, delta, line, stock_up

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster


async def next_change(stream: AsyncIterator[pb.AvailabilityChange], within: float) -> object:
    """The stream's next message, or None when none comes within `within` seconds."""
    try:
        return await asyncio.wait_for(anext(stream), within)
    except TimeoutError:
        return None


def watch(stubs: Stubs, **fields: object) -> AsyncIterator[pb.AvailabilityChange]:
    request = pb.WatchAvailabilityRequest(**fields)  # type: ignore[arg-type]
    return aiter(stubs.availability.WatchAvailability(request))


async def test_a_watcher_sees_another_clients_holds_in_version_order(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    # given 10 of "a" and "b" at s1 and s2, and a watcher of "a" at s1 with its current state
    stubs = Stubs(channel)
    await stock_up(stubs, {(loc, sku): 10 for loc in ("s1", "s2") for sku in ("a", "b")})
    stream = watch(stubs, skus=["a"], location_ids=["s1"], send_current=True)
    first = await next_change(stream, 5.0)
    assert isinstance(first, pb.AvailabilityChange) and first.current
    assert (first.level.location_id, first.level.sku, first.level.available) == ("s1", "a", 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as other_channel:
        other = Stubs(other_channel)
        versions = [first.level.version]
        for n, rid in enumerate(("r1", "r2"), start=1):
            # when another client holds at rows the watcher did not choose, then at s1 "a"
            await other.reservations.Reserve(
                pb.ReserveRequest(reservation_id=f"{rid}-x", lines=[line("s2", "a", 1)])
            )
            await other.reservations.Reserve(
                pb.ReserveRequest(reservation_id=f"{rid}-y", lines=[line("s1", "b", 1)])
            )
            await other.reservations.Reserve(
                pb.ReserveRequest(reservation_id=rid, lines=[line("s1", "a", 2)])
            )
            got = await next_change(stream, 5.0)
            # then the watcher sees that hold, and only it
            assert isinstance(got, pb.AvailabilityChange) and not got.current
            assert (got.level.location_id, got.level.sku) == ("s1", "a")
            assert (got.level.reserved, got.level.available) == (2 * n, 10 - 2 * n)
            versions.append(got.level.version)
    # each change moves the version by one
    assert versions == [versions[0], versions[0] + 1, versions[0] + 2]
    assert await next_change(stream, 0.3) is None  # nothing about s2 or "b" came through


async def test_every_kind_of_write_of_a_row_reaches_its_watcher(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    """Each script that writes rows publishes them: a stock event, safety stock, a hold, its
    commit, a release, and an expiry by the sweeper."""
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 10})
    stream = watch(stubs, skus=["a"], location_ids=["s1"], send_current=True)

    async def seen() -> tuple[int, int, int]:
        got = await next_change(stream, 5.0)
        assert isinstance(got, pb.AvailabilityChange), "a write was not published"
        return got.level.on_hand, got.level.reserved, got.level.safety_stock

    def hold(rid: str, qty: int, ttl: float = 60.0) -> object:
        lines = [line("s1", "a", qty)]
        return stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=lines, ttl_seconds=ttl)
        )

    assert await seen() == (10, 0, 0)  # the opening state: subscribed before it was read
    now = int(time.time() * 1000)
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[delta("d1", "s1", "a", 5, now)]))
    assert await seen() == (15, 0, 0)
    entry = pb.SafetyStockEntry(location_id="s1", sku="a", qty=2)
    await stubs.stock.SetSafetyStock(pb.SetSafetyStockRequest(entries=[entry]))
    assert await seen() == (15, 0, 2)
    await hold("w1", 3)
    assert await seen() == (15, 3, 2)
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="w1"))
    assert await seen() == (12, 0, 2)
    await hold("w2", 4)
    assert await seen() == (12, 4, 2)
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="w2"))
    assert await seen() == (12, 0, 2)
    await hold("w3", 1, ttl=0.2)
    assert await seen() == (12, 1, 2)
    assert await seen() == (12, 0, 2)  # expired by the sweeper


async def test_a_sku_watched_everywhere_reports_every_location(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 5, ("s2", "a"): 5})
    stream = watch(stubs, skus=["a"])
    await asyncio.sleep(0.2)  # the subscription is made when the call starts
    for loc in ("s2", "s1"):
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=f"r-{loc}", lines=[line(loc, "a", 1)])
        )
    got = [await next_change(stream, 1.0) for _ in range(2)]
    # (order holds within a row, by version; across locations, and so across a cluster's
    # nodes, changes may come in either order)
    assert {(c.level.location_id, c.level.reserved) for c in got} == {("s2", 1), ("s1", 1)}


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("skus", {}),
        ("skus", {"location_ids": ["s1"], "send_current": True}),
        ("location_ids", {"skus": ["a"], "location_ids": ["nowhere"]}),
        ("skus[0]", {"skus": [""], "location_ids": ["s1"]}),
    ],
    ids=["nothing-chosen", "current-without-skus", "unknown-location", "empty-sku"],
)
async def test_bad_watch_requests_are_named(
    channel: grpc.aio.Channel, field: str, fields: dict[str, object]
) -> None:
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await next_change(watch(stubs, **fields), 5.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field)


async def test_the_server_serves_on_after_its_last_watcher_leaves(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    # given one watch, opened and then closed, so that nothing is subscribed any more
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 10})
    call = stubs.availability.WatchAvailability(
        pb.WatchAvailabilityRequest(location_ids=["s1"], skus=["a"], send_current=True)
    )
    await call.read()
    call.cancel()
    for _ in range(200):
        if not server.hub.watchers:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # then the process still answers (on a cluster, redis-py's pubsub with no subscription
    # answers at once: the subscription loop once spun on it, holding the event loop)
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["a"], location_ids=["s1"]), timeout=5
    )
    assert got.levels[0].on_hand == 10


async def test_wide_openings_take_turns_and_each_sends_every_row_once(
    channel: grpc.aio.Channel,
) -> None:
    """Three watches of 1,800 rows each open at once: more than LIGHT_OPENING rows, so
    they are read and sent a location at a time, in turns (OPENINGS_AT_ONCE at once)."""
    stubs = Stubs(channel)
    locations, skus = ["s1", "s2", "s3"], [f"k{i:04d}" for i in range(600)]
    assert len(locations) * len(skus) > LIGHT_OPENING and OPENINGS_AT_ONCE < 3
    await stock_up(stubs, {(loc, s): 1 + i for loc in locations for i, s in enumerate(skus)})
    streams = [watch(stubs, skus=skus, location_ids=locations, send_current=True) for _ in range(3)]

    async def opening(stream: AsyncIterator[pb.AvailabilityChange]) -> list[tuple[str, str, int]]:
        got = []
        for _ in range(len(locations) * len(skus)):
            change = await next_change(stream, 10.0)
            assert isinstance(change, pb.AvailabilityChange) and change.current
            got.append((change.level.location_id, change.level.sku, change.level.on_hand))
        return got

    openings = await asyncio.gather(*(opening(stream) for stream in streams))
    expected = [(loc, s, 1 + i) for loc in locations for i, s in enumerate(skus)]
    assert all(got == expected for got in openings)
    # a later write reaches each of them, as a change
    now = int(time.time() * 1000)
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[delta("d", "s2", "k0007", 5, now)]))
    for stream in streams:
        change = await next_change(stream, 5.0)
        assert isinstance(change, pb.AvailabilityChange) and not change.current
        assert (change.level.location_id, change.level.sku, change.level.on_hand) == (
            "s2",
            "k0007",
            13,
        )
