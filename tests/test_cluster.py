"""Redis Cluster: the service finds a cluster by itself, and the tests marked ON_BOTH (the
concurrency, fault, model and storage tests) really spread their locations over its nodes,
so that a cross-location reservation there is a saga across nodes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from redis.asyncio.cluster import RedisCluster

from engine.app import create_server
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.connect import connect
from engine.store.keys import Keys

from .conftest import served, settings_for
from .grpc_helpers import level, line, stock_up

# the locations the ON_BOTH tests use (test_concurrency/test_faults, test_model)
SERVICE_LOCATIONS = ("s1", "s2", "s3")
MODEL_LOCATIONS = ("loc-a", "loc-b", "loc-c")


async def test_the_test_locations_live_on_every_node_of_the_cluster(cluster_url: str) -> None:
    client = await connect(cluster_url, 2.0)
    try:
        assert isinstance(client, RedisCluster)
        nodes = {node.name for node in client.get_primaries()}
        assert len(nodes) == 3
        for locations in (SERVICE_LOCATIONS, MODEL_LOCATIONS):
            used = {client.get_node_from_key(Keys.due(loc)).name for loc in locations}
            assert used == nodes, f"{locations} use only {used}"
    finally:
        await client.aclose()


async def test_the_service_asks_whether_redis_is_a_cluster(
    cluster_url: str, one_redis_url: str
) -> None:
    for url, cluster in ((cluster_url, True), (one_redis_url, False)):
        app = create_server(settings_for(url))
        await app.start()
        try:
            assert app.storage.cluster is cluster
        finally:
            await app.stop(grace=0.5)


async def test_a_reservation_across_three_nodes_holds_commits_and_releases(
    cluster_url: str,
) -> None:
    async with served(cluster_url) as (app, stubs):
        await app.redis.flushall()
        await stock_up(stubs, {(loc, "a"): 5 for loc in SERVICE_LOCATIONS})
        lines = [line(loc, "a", 2) for loc in SERVICE_LOCATIONS]
        for rid in ("keep", "drop"):
            got = await stubs.reservations.Reserve(
                pb.ReserveRequest(reservation_id=rid, lines=lines, ttl_seconds=60)
            )
            assert got.reservation.state == pb.RESERVATION_STATE_HELD
        # a third of the same size no longer fits anywhere: nothing is held for it
        short = await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="late", lines=lines, ttl_seconds=60)
        )
        assert not short.HasField("reservation")
        assert {s.location_id for s in short.shortfalls} == set(SERVICE_LOCATIONS)
        await stubs.reservations.Commit(pb.CommitRequest(reservation_id="keep"))
        await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="drop"))
        for loc in SERVICE_LOCATIONS:
            row = await level(stubs, loc, "a")
            assert (row.on_hand, row.reserved, row.available) == (3, 0, 3)


async def test_a_reserve_at_one_location_is_one_round_trip_and_no_saga_on_a_cluster(
    cluster_url: str,
) -> None:
    """Its directory entry (at the id's node) and its hold (at the location's), both
    sent before either is answered, and nothing else: no saga index, no claim, no settle."""
    events: list[tuple[str, str]] = []

    def recorded(real: Any, name_of: Any) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Any:
            events.append(("sent", name_of(args)))
            try:
                return await real(*args, **kwargs)
            finally:
                events.append(("answered", name_of(args)))

        return run

    async with served(cluster_url) as (app, stubs):
        await app.redis.flushall()
        await stock_up(stubs, {("s1", "a"): 5})
        storage = app.storage
        real_call, real_pipeline = storage.call, storage.pipeline
        storage.call = recorded(real_call, lambda args: args[0])  # type: ignore[method-assign]
        storage.pipeline = recorded(real_pipeline, lambda args: "pipeline")  # type: ignore[method-assign]
        got = await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="one-trip", lines=[line("s1", "a", 2)])
        )
        storage.call, storage.pipeline = real_call, real_pipeline  # type: ignore[method-assign]
        assert got.reservation.state == pb.RESERVATION_STATE_HELD
        # (the sweeper's own reads, on its own task, may fall in between: not this call's)
        own = [event for event in events if event[1] != "pipeline"]
        assert sorted(own[:2]) == [("sent", "hold"), ("sent", "place")]
        assert sorted(own[2:]) == [("answered", "hold"), ("answered", "place")]
        assert await app.storage.open_sagas() == []
        assert (await level(stubs, "s1", "a")).reserved == 2


async def test_an_id_is_one_reservation_at_one_location_on_a_cluster(cluster_url: str) -> None:
    """The same id elsewhere is refused and the stock there is left as it was; an id whose
    hold fell short is free again at once; many concurrent tries of one id hold it once."""
    async with served(cluster_url) as (app, stubs):
        await app.redis.flushall()
        await stock_up(stubs, {(loc, "a"): 5 for loc in SERVICE_LOCATIONS})

        def reserve(rid: str, loc: str, qty: int) -> Any:
            lines = [line(loc, "a", qty)]
            return stubs.reservations.Reserve(pb.ReserveRequest(reservation_id=rid, lines=lines))

        assert (await reserve("x", "s1", 1)).reservation.state == pb.RESERVATION_STATE_HELD
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await reserve("x", "s2", 1)
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert (await level(stubs, "s2", "a")).reserved == 0

        short = await reserve("y", "s2", 6)
        assert not short.HasField("reservation")
        assert (await reserve("y", "s3", 1)).reservation.state == pb.RESERVATION_STATE_HELD

        answers = await asyncio.gather(*(reserve("z", "s2", 2) for _ in range(20)))
        assert {a.reservation.state for a in answers} == {pb.RESERVATION_STATE_HELD}
        assert (await level(stubs, "s2", "a")).reserved == 2
        await stubs.reservations.Commit(pb.CommitRequest(reservation_id="z"))
        row = await level(stubs, "s2", "a")
        assert (row.on_hand, row.reserved) == (3, 0)
