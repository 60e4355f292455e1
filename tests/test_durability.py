"""What a failover keeps, on a real primary and its replica (two embedded valkey servers):
with --durability replica no hold answered HELD is lost when the primary dies and its
replica takes over, however far behind the replica was; with the default (local) the holds
the replica had not received are lost, and the test counts them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from engine.app import storage_of
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.connect import connect
from engine.store.embedded import EmbeddedRedis

from .conftest import served, settings_for
from .grpc_helpers import line, stock_up
from .processes import eventually

HOLDS = 20  # Reserves sent while the replica is paused


class Pair:
    """A primary and a replica of it, both up and in sync."""

    def __init__(self, root: Path) -> None:
        self.primary = EmbeddedRedis(root / "primary", password=False)
        self.replica = EmbeddedRedis(root / "replica", password=False)

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        self.replica.follow("127.0.0.1", self.primary.port)

    def fall_behind(self) -> None:
        """The replica stops taking the primary's writes: it is frozen, and its link is cut
        on the primary's side, so nothing written from now on reaches it (not even through
        the socket buffers a thawed replica would still read)."""
        os.kill(self.replica.pid, signal.SIGSTOP)
        with redis.Redis.from_url(self.primary.url) as r:
            r.client_kill_filter(_type="replica")

    def fail_over(self) -> None:
        """The primary dies; its replica, thawed, becomes the primary."""
        os.kill(self.primary.pid, signal.SIGKILL)
        os.kill(self.replica.pid, signal.SIGCONT)
        with redis.Redis.from_url(self.replica.url) as r:
            r.replicaof("NO", "ONE")

    def stop(self) -> None:
        for node in (self.primary, self.replica):
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(node.pid, signal.SIGCONT)
            node.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    both = Pair(tmp_path)
    both.start()
    yield both
    both.stop()


async def holds_through_a_failover(pair: Pair, durability: str) -> tuple[list[str], int]:
    """Holds answered HELD while the replica is paused, then the failover: (the ids
    answered HELD, how many of them the new primary does not have)."""
    overrides = {"durability": durability, "durability_timeout_ms": 300}
    held: list[str] = []
    async with served(pair.primary.url, **overrides) as (_, stubs):
        await stock_up(stubs, {("L1", "S1"): 1000})
        assert await eventually(lambda: asyncio.to_thread(pair.replica.in_sync), 20.0)
        pair.fall_behind()

        async def reserve(i: int) -> None:
            request = pb.ReserveRequest(reservation_id=f"f{i}", lines=[line("L1", "S1", 1)])
            try:
                answer = await stubs.reservations.Reserve(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                return
            if answer.reservation.state == pb.RESERVATION_STATE_HELD:
                held.append(request.reservation_id)

        await asyncio.gather(*(reserve(i) for i in range(HOLDS)))
        pair.fail_over()
    client = await connect(pair.replica.url, 2.0)
    try:
        storage = storage_of(client, settings_for(pair.replica.url))
        found = [await storage.directory(rid) for rid in held]
    finally:
        await client.aclose()
    return held, sum(1 for entry in found if entry is None)


async def test_with_replica_durability_no_hold_answered_held_is_lost_at_failover(
    pair: Pair,
) -> None:
    held, lost = await holds_through_a_failover(pair, "replica")
    # the replica was paused: no hold could be confirmed, so none was answered HELD
    assert held == [] and lost == 0


async def test_with_local_durability_the_holds_the_replica_missed_are_lost(pair: Pair) -> None:
    held, lost = await holds_through_a_failover(pair, "local")
    # every hold was answered HELD by the primary alone, and the replica had none of them
    assert len(held) == HOLDS
    assert lost == HOLDS


async def test_a_hold_refused_for_want_of_a_replica_is_held_on_retry_once_it_is_back(
    pair: Pair,
) -> None:
    async with served(pair.primary.url, durability="replica", durability_timeout_ms=300) as (
        _,
        stubs,
    ):
        await stock_up(stubs, {("L1", "S1"): 10})
        request = pb.ReserveRequest(reservation_id="r1", lines=[line("L1", "S1", 2)])
        os.kill(pair.replica.pid, signal.SIGSTOP)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.reservations.Reserve(request)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "replica" in (refused.value.details() or "")
        os.kill(pair.replica.pid, signal.SIGCONT)
        assert await eventually(lambda: asyncio.to_thread(pair.replica.in_sync), 20.0)
        again = await stubs.reservations.Reserve(request)  # the same id: idempotent
        assert again.reservation.state == pb.RESERVATION_STATE_HELD
        level = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"])
        )
        assert level.levels[0].reserved == 2  # held once, not twice


@pytest.mark.parametrize(
    "setting",
    [("min-replicas-to-write", "1"), ("maxmemory", "1")],
    ids=["no-replica-in-reach", "out-of-memory"],
)
async def test_a_primary_that_refuses_writes_is_answered_unavailable_and_reads_go_on(
    tmp_path: Path, setting: tuple[str, str]
) -> None:
    """A primary with min-replicas-to-write and no replica in reach answers NOREPLICAS; one
    past its maxmemory answers OOM. Neither is an engine fault: both are UNAVAILABLE (the
    caller retries elsewhere or later), nothing is written, and reads still work."""
    store = EmbeddedRedis(tmp_path / "alone", password=False)
    store.start()
    try:
        async with served(store.url) as (_, stubs):
            await stock_up(stubs, {("L1", "a"): 5})
            with redis.Redis.from_url(store.url) as r:
                r.config_set(*setting)
            request = pb.ReserveRequest(reservation_id="r1", lines=[line("L1", "a", 2)])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.reservations.Reserve(request)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            got = await stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(location_ids=["L1"], skus=["a"])
            )
            assert (got.levels[0].available, got.levels[0].reserved) == (5, 0)
    finally:
        store.stop()


async def reserve_status(stubs: Any, rid: str) -> tuple[grpc.StatusCode, str]:
    request = pb.ReserveRequest(reservation_id=rid, lines=[line("L1", "a", 1)])
    try:
        await stubs.reservations.Reserve(request)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_with_fsync_durability_a_write_the_primary_cannot_put_on_disk_is_unavailable(
    tmp_path: Path,
) -> None:
    # given a server that answers writes only once the store's AOF has them on disk
    store = EmbeddedRedis(tmp_path / "alone", password=False)
    store.start()
    try:
        async with served(store.url, durability="fsync", durability_timeout_ms=300) as (_, stubs):
            await stock_up(stubs, {("L1", "a"): 5})
            assert await reserve_status(stubs, "r1") == (grpc.StatusCode.OK, "")
            # when the store stops writing its AOF
            with redis.Redis.from_url(store.url) as r:
                r.config_set("appendonly", "no")
            # then a hold is UNAVAILABLE (made, but not on disk), and is held once on retry
            # once the AOF is back
            code, details = await reserve_status(stubs, "r2")
            assert code == grpc.StatusCode.UNAVAILABLE and "durable" in details, details
            with redis.Redis.from_url(store.url) as r:
                r.config_set("appendonly", "yes")

            async def held() -> bool:
                return (await reserve_status(stubs, "r2"))[0] == grpc.StatusCode.OK

            assert await eventually(held, 20.0)
            got = await stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(location_ids=["L1"], skus=["a"])
            )
            assert got.levels[0].reserved == 2
    finally:
        store.stop()
