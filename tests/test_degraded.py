"""A Redis Cluster with one primary frozen is a degraded store, not a store that is down:
health stays SERVING (the other shards' calls go on), and the probe says which primary is
missing, on a cluster of its own (the session's is left alone)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from engine.store.embedded import LocalCluster

from .conftest import served
from .processes import eventually, health_status

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    made = LocalCluster(tmp_path / "cluster")
    made.start()
    yield made
    for node in made.nodes:
        os.kill(node.pid, signal.SIGCONT)
    made.stop()
    forget_dropped_connections()


def forget_dropped_connections() -> None:
    """redis-py's cluster client, finding a node gone, maps the cluster again and drops its
    old node objects with their connections open: collected here, their complaints are not
    this suite's (they would surface as unraisable warnings at the end of the session)."""
    complaints: list[object] = []
    before = sys.unraisablehook
    sys.unraisablehook = complaints.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    finally:
        sys.unraisablehook = before


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
