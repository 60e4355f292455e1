"""Limits that hold under abuse: every repeated field capped before any Redis I/O, a count
that holds too many lines or goes silent cut, long orders planned off the event loop with
a bounded queue, and the heavy paths still correct behind their slots."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.app import Omnistock, create_server
from engine.domain.model import MAX_ROWS, BasketLine, Location, LocationType
from engine.domain.sourcing import Candidate, Constraints, CostModel, plan_order
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.embedded import EmbeddedRedis
from engine.usecases.planner import Planner

from .conftest import served, settings_for
from .grpc_helpers import LAT, LON, Stubs, count, line, location, place, store

N = 100_001  # over every cap


def oversized() -> Iterator[tuple[str, Any, str]]:
    """(RPC, request, the field named) for each repeated field, each over its cap."""
    ids = [f"x{i}" for i in range(N)]
    yield "GetAvailability", pb.GetAvailabilityRequest(skus=["a"], location_ids=ids), "location_ids"
    yield "GetAvailability", pb.GetAvailabilityRequest(skus=ids, location_ids=["L1"]), "skus"
    yield (
        "GetAvailability",
        pb.GetAvailabilityRequest(skus=["a"], location_types=[pb.LOCATION_TYPE_STORE] * 100),
        "location_types",
    )
    basket = [pb.BasketLine(sku=f"s{i}", qty=1) for i in range(1000)]
    yield "FindNearby", pb.FindNearbyRequest(latitude=1, longitude=1, lines=basket), "lines"
    yield (
        "Reserve",
        pb.ReserveRequest(reservation_id="r", lines=[line(f"L{i}", "a", 1) for i in range(1000)]),
        "lines",
    )
    yield "Allocate", pb.AllocateRequest(latitude=1, longitude=1, lines=basket), "lines"
    yield (
        "Allocate",
        pb.AllocateRequest(latitude=1, longitude=1, lines=basket[:1], excluded_location_ids=ids),
        "excluded_location_ids",
    )
    yield (
        "UpsertLocations",
        pb.UpsertLocationsRequest(locations=[location(f"L{i}") for i in range(10_001)]),
        "locations",
    )
    yield (
        "SetSafetyStock",
        pb.SetSafetyStockRequest(
            entries=[pb.SafetyStockEntry(location_id="L1", sku=f"s{i}", qty=1) for i in range(N)]
        ),
        "entries",
    )
    yield (
        "ApplyEvents",
        pb.ApplyEventsRequest(events=[count(f"e{i}", "L1", "a", 1) for i in range(5001)]),
        "events",
    )
    yield (
        "SetMappings",
        pb.SetMappingsRequest(
            mappings=[
                pb.Mapping(source="s", kind=pb.MAPPING_KIND_ITEM, external_id=f"e{i}", id="a")
                for i in range(10_001)
            ]
        ),
        "mappings",
    )


@pytest.fixture
async def frozen_store(tmp_path: Path) -> AsyncIterator[Omnistock]:
    """A server whose Redis is frozen (SIGSTOP) once it has started: any call that touched
    Redis would be answered UNAVAILABLE, so one answered otherwise did not."""
    store = EmbeddedRedis(tmp_path / "redis")
    store.start()
    app = create_server(settings_for(store.url))
    await app.start()
    os.kill(store.pid, signal.SIGSTOP)
    try:
        yield app
    finally:
        os.kill(store.pid, signal.SIGCONT)
        await app.stop(grace=1.0)
        store.stop()


async def test_every_repeated_field_is_capped_before_any_redis_io(
    frozen_store: Omnistock,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{frozen_store.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):  # the probe has found the store down: the circuit is open
            got = await health.Check(health_pb2.HealthCheckRequest())
            if got.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the frozen store was never found down")
        stubs = Stubs(channel)
        services = (stubs.availability, stubs.reservations, stubs.sourcing, stubs.stock)
        for rpc, request, field in oversized():
            method = next(getattr(s, rpc) for s in services if hasattr(s, rpc))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, field)
            assert (err.value.details() or "").startswith(f"{field}: at most"), (rpc, field)


async def test_a_count_past_the_lines_held_or_gone_silent_is_cut(
    one_redis_url: str, redis: Any
) -> None:
    async with served(one_redis_url, count_lines_held=100, count_idle_seconds=0.5) as (_, stubs):
        header = pb.CountHeader(location_id="L1", count_id="c", counted_at=int(time.time() * 1000))
        many = [pb.CountLine(sku=f"s{i}", qty=1) for i in range(101)]
        big = pb.ReconcileCountRequest(header=header, lines=many, end=True)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.ReconcileCount(iter([big]))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        async def silent() -> AsyncIterator[pb.ReconcileCountRequest]:
            yield pb.ReconcileCountRequest(header=header, lines=many[:5])
            await asyncio.sleep(30)  # never ends: the server must cut it

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.ReconcileCount(silent(), timeout=20)
        # cut by the server (RESOURCE_EXHAUSTED), not by the deadline (DEADLINE_EXCEEDED)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "nothing received" in (err.value.details() or "")
        # the budget came back: a count within it is applied
        small = pb.ReconcileCountRequest(header=header, lines=many[:100], end=True)
        done = await stubs.stock.ReconcileCount(iter([small]))
        assert done.changed == 100


def long_order(n_lines: int, n_candidates: int) -> tuple[list[BasketLine], list[Candidate]]:
    lines = [BasketLine(f"s{i}", 1 + i % 3) for i in range(n_lines)]
    candidates = [
        Candidate(
            Location(f"L{j}", f"L{j}", LocationType.STORE, 51.0, 0.01 * j),
            float(j),
            tuple((i * 7 + j * 3) % 5 for i in range(n_lines)),
            None,
        )
        for j in range(n_candidates)
    ]
    return lines, candidates


async def test_a_long_order_is_planned_in_a_worker_as_it_would_be_inline() -> None:
    lines, candidates = long_order(30, 60)
    planner = Planner(workers=1, waiting=0)
    try:
        got = await planner.plan(lines, candidates, CostModel(), Constraints(5, True))
    finally:
        planner.close()
    assert got == plan_order(lines, candidates, CostModel(), Constraints(5, True))


async def test_orders_past_the_planners_queue_are_refused_not_queued() -> None:
    lines, candidates = long_order(100, 100)
    planner = Planner(workers=1, waiting=0)
    try:
        got = await asyncio.gather(
            *(
                planner.plan(lines, candidates, CostModel(), Constraints(10, True))
                for _ in range(3)
            ),
            return_exceptions=True,
        )
    finally:
        planner.close()
    refused = [g for g in got if isinstance(g, Exception)]
    assert len(refused) == 2 and all("retry later" in str(e) for e in refused)


async def test_allocate_plans_a_long_order_over_grpc(channel: grpc.aio.Channel) -> None:
    stubs = Stubs(channel)
    skus = [f"s{i}" for i in range(40)]
    stores = [store(f"x{j}", 1 + j) for j in range(10)]
    await place(stubs, stores, {(f"x{j}", sku): 5 for j in range(10) for sku in skus})
    answer = await stubs.sourcing.Allocate(
        pb.AllocateRequest(
            lines=[pb.BasketLine(sku=sku, qty=1) for sku in skus],
            latitude=LAT,
            longitude=LON,
            max_shipments=3,
        )
    )
    assert not answer.unfilled
    assert sum(ln.qty for s in answer.shipments for ln in s.lines) == 40


async def test_a_long_partial_basket_reads_fewer_locations_within_the_row_limit(
    channel: grpc.aio.Channel,
) -> None:
    # given 150 stores near a point, and a 200-line basket: 100 x 200 rows is the limit
    stubs = Stubs(channel)
    await stubs.stock.UpsertLocations(
        pb.UpsertLocationsRequest(locations=[store(f"n{j}", 0.1 + j * 0.01) for j in range(150)])
    )
    basket = [pb.BasketLine(sku=f"s{i}", qty=1) for i in range(200)]
    answer = await stubs.availability.FindNearby(
        pb.FindNearbyRequest(latitude=LAT, longitude=LON, radius_km=50, lines=basket, partial=True)
    )
    assert answer.locations_considered == MAX_ROWS // 200


async def test_a_count_refused_part_way_is_told_why_while_its_sender_still_writes(
    one_redis_url: str, redis: Any
) -> None:
    # given a server that holds at most 5,000 count lines, and a count of 20,000 lines sent
    # in 20 messages without waiting: refused part way, as its sender is still writing
    async with served(one_redis_url, count_lines_held=5000) as (_, stubs):
        call = stubs.stock.ReconcileCount()
        header = pb.CountHeader(location_id="L1", count_id="c", counted_at=int(time.time() * 1000))
        with pytest.raises(grpc.aio.AioRpcError):
            await call.write(pb.ReconcileCountRequest(header=header))
            for first in range(0, 20_000, 1000):
                lines = [pb.CountLine(sku=f"s{i}", qty=1) for i in range(first, first + 1000)]
                await call.write(pb.ReconcileCountRequest(lines=lines))
            await call.done_writing()
            await call
        # then it hears the server's answer, not the client library's INTERNAL
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "count lines" in (await call.details() or "")


class Unreadable:
    """A repeated field past its cap whose items must not be read: its size is all a
    refusal needs (converting 100,000 entries first held the event loop)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("the field was read before its size was checked")


class Refused(Exception):
    pass


class CallContext:
    """What the call frame (engine/api/rpc.py) asks of a context."""

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Refused(code, details)


async def test_safety_stock_past_its_cap_is_refused_before_its_entries_are_read(
    server: Omnistock,
) -> None:
    request = SimpleNamespace(entries=Unreadable(N))
    with pytest.raises(Refused) as refused:
        await server.stock_service.SetSafetyStock(request, CallContext())  # type: ignore[arg-type]
    code, details = refused.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("entries: at most"), details
