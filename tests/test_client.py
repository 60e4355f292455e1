"""The Python client against a real server: typed answers, and retries that hold once."""

from __future__ import annotations

import grpc
import pytest

from engine.app import Omnistock
from engine.client import Line, OmnistockClient
from engine.domain import ReservationState

from .conftest import ON_BOTH
from .grpc_helpers import Stubs, stock_up


@ON_BOTH
async def test_client_reserves_commits_and_reads(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 3})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        held = await client.reserve("c1", [Line("s1", "a", 2)], ttl_seconds=60)
        again = await client.reserve("c1", [Line("s1", "a", 2)], ttl_seconds=60)
        short = await client.reserve("c2", [Line("s1", "a", 2)])
        assert held.ok and again.ok
        assert [(s.sku, s.missing) for s in short.shortfalls] == [("a", 1)]
        assert (await client.commit("c1")).state is ReservationState.COMMITTED
        (level,) = await client.availability(["a"], location_ids=["s1"])
        assert (level.row.on_hand, level.available) == (1, 1)


async def test_client_gives_up_after_its_attempts_when_nobody_answers() -> None:
    async with OmnistockClient("127.0.0.1:1", timeout=0.5, attempts=2, backoff=0.01) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.get_reservation("x")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
