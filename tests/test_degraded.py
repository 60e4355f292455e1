"""A Redis Cluster with one primary frozen is a degraded store, not a store that is down:
health stays SERVING (the other shards' calls go on), and the probe says which primary is
missing, on a cluster of its own (the session's is left alone)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import Keys
from engine.store.localcluster import LocalCluster

from .cluster_helpers import local_cluster, named, on_node
from .conftest import served
from .grpc_helpers import line, location, stock_up
from .processes import eventually, health_status

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster") as made:
        yield made


async def test_a_frozen_primary_is_a_degraded_shard_not_a_store_down(
    cluster: LocalCluster,
) -> None:
    probe = {"redis_probe_interval_seconds": 0.1, "redis_probe_timeout_seconds": 0.3}
    async with served(cluster.url, **probe) as (app, _):

        def nodes_down() -> float:
            value = app.metrics.registry.get_sample_value("omnistock_redis_nodes_down")
            return value or 0.0

        frozen = cluster.nodes[0]  # the node of the URL: the one a single ping would ask
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            assert await eventually(lambda: nodes_down() == 1, 3.0)
            # well within the cluster's node timeout (5 s): the others still serve their slots
            for _ in range(10):
                assert await health_status(app.port) == SERVING
                await asyncio.sleep(0.1)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert await eventually(lambda: nodes_down() == 0, 5.0)
        assert await health_status(app.port) == SERVING


async def test_a_frozen_primary_fails_only_the_calls_for_its_own_slots(
    cluster: LocalCluster,
) -> None:
    """Reserves at the healthy shards' locations, sent beside Reserves at the frozen
    shard's (so that they share batches), all succeed within their deadline; the frozen
    shard's fail. (The ids, and their sagas index shards, are kept off the frozen node: on
    a cluster a Reserve also writes in its id's slot.)"""
    frozen = cluster.nodes[0]

    def healthy(key: str) -> bool:
        return not on_node(cluster, 0, key)

    def healthy_id(rid: str) -> bool:
        return healthy(Keys.directory(rid)) and healthy(Keys.sagas(rid))

    far = named("far", healthy, 4)
    near = named("near", lambda n: on_node(cluster, 0, n), 1)[0]
    ids = iter(named("r", healthy_id, 1000))
    async with served(cluster.url, redis_timeout_seconds=0.5) as (_, stubs):
        locs = [location(loc) for loc in [*far, near]]
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=locs))
        await stock_up(stubs, {(loc, "a"): 1_000_000 for loc in [*far, near]})

        async def reserve(loc: str) -> grpc.StatusCode:
            request = pb.ReserveRequest(reservation_id=next(ids), lines=[line(loc, "a", 1)])
            try:
                got = await stubs.reservations.Reserve(request, timeout=1.5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            assert got.reservation.state == pb.RESERVATION_STATE_HELD
            return grpc.StatusCode.OK

        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            far_codes: list[grpc.StatusCode] = []
            near_codes: list[grpc.StatusCode] = []
            # past the node timeout (5 s): the cluster then knows the node failed, and
            # still serves the other slots (cluster-require-full-coverage no)
            for _ in range(8):
                near_call = asyncio.ensure_future(reserve(near))
                far_codes += await asyncio.gather(*(reserve(loc) for loc in far * 4))
                near_codes.append(await near_call)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert far_codes == [grpc.StatusCode.OK] * len(far_codes)
        assert grpc.StatusCode.OK not in near_codes  # the frozen shard's calls did wait on it
