"""The Python client against a real server: typed answers, and retries that hold once."""

from __future__ import annotations

import time

import grpc
import pytest

from engine.app import Omnistock
from engine.client import (
    BasketLine,
    ChannelRule,
    CustomerLimit,
    Fulfilment,
    Line,
    Network,
    NetworkLevel,
    OmnistockClient,
    Pool,
    Selector,
    StockState,
    Supply,
    SupplyKind,
    Transfer,
)
from engine.domain.bundles import Bundle
from engine.domain.model import LocationType, ReservationState
from engine.domain.returns import ReturnLine
from engine.domain.supply import SupplyOutcome
from engine.domain.transfers import TransferState
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import ON_BOTH
from .grpc_helpers import Stubs, count, location, stock_up


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


@ON_BOTH
async def test_client_finds_stores_nearby(server: Omnistock, channel: grpc.aio.Channel) -> None:
    # given "s1" at the default point with 3 of "a", and "s2" 2 degrees north with 1
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 3})
    far = location("s2", lat=53.5)
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[far]))
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[count("c2", "s2", "a", 1)]))
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        basket = [BasketLine("a", 2)]
        hits = await client.find_nearby(51.5, -0.12, 500, basket, fulfilment=Fulfilment.PICKUP)
        assert [(h.location.id, h.available) for h in hits] == [("s1", (3,))]
        part = await client.find_nearby(51.5, -0.12, 500, basket, partial=True)
        assert [h.location.id for h in part] == ["s1", "s2"]
        assert part[1].distance_km == pytest.approx(222.4, abs=0.1)  # 2 degrees of latitude
        assert part[1].filled(tuple(basket)) == (0, 1)


async def test_a_client_of_two_servers_spreads_its_calls_over_both(redis_url: str) -> None:
    """Two server processes' worth (two servers in this process) on one store."""
    from .conftest import served

    async with served(redis_url) as (first, stubs), served(redis_url) as (second, _):
        await stock_up(stubs, {("L1", "S1"): 5})
        targets = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        async with OmnistockClient(targets) as client:
            for _ in range(20):
                (level,) = await client.availability(["S1"], location_ids=["L1"])
                assert level.row.on_hand == 5
        served_by = [
            app.metrics.registry.get_sample_value(
                "omnistock_rpc_seconds_count", {"method": "GetAvailability", "code": "OK"}
            )
            or 0
            for app in (first, second)
        ]
        assert all(served_by) and sum(served_by) == 20, served_by


def test_several_targets_must_be_addresses() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        OmnistockClient(["localhost:1", "localhost:2"])


async def test_client_holds_and_reads_for_a_sales_channel(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 5})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        assert await client.set_channel_rule("web", ChannelRule(buffer=2)) > 0
        (web,) = await client.availability(["a"], location_ids=["s1"], channel="web")
        (plain,) = await client.availability(["a"], location_ids=["s1"])
        assert (web.available, plain.available) == (3, 5)
        short = await client.reserve("w1", [Line("s1", "a", 4)], channel="web")
        assert [(s.sku, s.available) for s in short.shortfalls] == [("a", 3)]
        assert (await client.reserve("w2", [Line("s1", "a", 3)], channel="web")).ok
        # a launch pool for the app: the 2 units left are its alone
        assert await client.set_pool("s1", "a", Pool("app", 2))
        (app,) = await client.availability(["a"], location_ids=["s1"], channel="app")
        (web,) = await client.availability(["a"], location_ids=["s1"], channel="web")
        assert (app.available, web.available) == (2, 0)
        await client.set_channel_rule("web", None)  # removed: no buffer, still no pool units
        (web,) = await client.availability(["a"], location_ids=["s1"], channel="web")
        assert web.available == 0


async def test_client_holds_for_a_customer_within_a_limit(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 5, ("s2", "a"): 5})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        assert await client.set_customer_limit("a", CustomerLimit(2, 3_600_000)) > 0
        assert (await client.reserve("c1", [Line("s1", "a", 2)], customer_id="ann")).ok
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.reserve("c2", [Line("s2", "a", 1)], customer_id="ann")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await client.set_customer_limit("a", None)
        assert (await client.reserve("c2", [Line("s2", "a", 1)], customer_id="ann")).ok


async def test_client_sets_bundles_and_holds_one_as_its_components(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 5, ("s1", "b"): 5})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        assert await client.set_bundles([Bundle("kit", (("a", 2), ("b", 1)))]) > 0
        (kit,) = await client.availability(["kit"], location_ids=["s1"])
        assert kit.available == 2
        held = await client.reserve("k1", [Line("s1", "kit", 2)])
        assert held.reservation is not None and held.reservation.lines == (Line("s1", "kit", 2),)
        levels = await client.availability(["a", "b", "kit"], location_ids=["s1"])
        assert [(lv.sku, lv.available) for lv in levels] == [("a", 1), ("b", 3), ("kit", 0)]
        await client.set_bundles([], remove=["kit"])
        (kit,) = await client.availability(["kit"], location_ids=["s1"])
        assert kit.available == 0


@ON_BOTH
async def test_client_moves_a_held_line_once_however_often_it_asks(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    # given a cart holding 2 a at s1, and s2 with 3 a and s3 with 1
    await stock_up(Stubs(channel), {("s1", "a"): 5, ("s2", "a"): 3, ("s3", "a"): 1})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        held = await client.reserve("c1", [Line("s1", "a", 2)], ttl_seconds=60)
        assert held.reservation is not None
        # when its line moves to s2, twice under one move id (the whole line: qty 0)
        moved = await client.move_line("c1", "m1", Line("s1", "a", 0), "s2")
        again = await client.move_line("c1", "m1", Line("s1", "a", 2), "s2")
        # then it is held at s2 once, until the same expiry
        assert moved == again and moved.reservation is not None
        assert moved.reservation.lines == (Line("s2", "a", 2),)
        assert moved.reservation.expires_at == held.reservation.expires_at
        levels = await client.availability(["a"], location_ids=["s1", "s2"])
        assert [(lv.location, lv.row.reserved) for lv in levels] == [("s1", 0), ("s2", 2)]
        # and s3 is too short for it: the answer says by how much, and it stays at s2
        short = await client.move_line("c1", "m2", Line("s2", "a", 0), "s3")
        assert [(s.location, s.requested, s.available) for s in short.shortfalls] == [("s3", 2, 1)]
        assert (await client.get_reservation("c1")).lines == (Line("s2", "a", 2),)
        # and another move under a used move id is refused
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.move_line("c1", "m1", Line("s2", "a", 0), "s1")
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_client_sets_networks_and_reads_across_one(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 5, ("s2", "a"): 3, ("s3", "a"): 0})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        stores = Network("stores", selectors=(Selector(types=frozenset({LocationType.STORE})),))
        pair = Network("pair", frozenset({"s1", "s3"}))
        assert await client.set_networks([stores, pair]) == {"stores": 3, "pair": 2}
        assert await client.network_availability("stores", ["a", "b"]) == [
            NetworkLevel("a", 8, 2),
            NetworkLevel("b", 0, 0),
        ]
        await client.set_channel_rule("web", ChannelRule(buffer=3))
        assert await client.network_availability("pair", ["a"], channel="web") == [
            NetworkLevel("a", 2, 1)
        ]
        assert await client.set_networks([], remove=["pair"]) == {"pair": 0}


async def test_client_sets_supply_reads_promises_and_moves_a_transfer(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 5, ("s2", "b"): 1})  # makes s1 and s2
    due = int(time.time() * 1000) + 2 * 24 * 3600 * 1000
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        po = Supply("po-1", "s2", "a", 4, due, SupplyKind.ASN)
        assert await client.upsert_supply([po]) == [SupplyOutcome.CREATED]
        assert await client.upsert_supply([po]) == [SupplyOutcome.UNCHANGED]
        made = await client.create_transfer(Transfer("t1", "s1", "s2", (("a", 2),), due))
        assert made.state is TransferState.CREATED
        assert (await client.ship_transfer("t1")).state is TransferState.SHIPPED
        (p,), _ = await client.promise(["a"], location_ids=["s2"])
        assert (p.available_now, p.incoming, p.steps[-1].units) == (0, 6, 6)
        got, missing = await client.receive_transfer("t1", [("a", 1)])
        assert got.state is TransferState.RECEIVED
        assert [(d.sku, d.missing) for d in missing] == [("a", 1)]
        (p,), _ = await client.promise(["a"], location_ids=["s2"])
        assert (p.available_now, p.incoming) == (1, 4)


async def test_client_records_a_return_and_moves_it_to_sellable_once_inspected(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    await stock_up(Stubs(channel), {("s1", "a"): 1, ("s2", "a"): 0})
    async with OmnistockClient(f"127.0.0.1:{server.port}") as client:
        got = await client.record_return("ret-1", "s2", [("a", 2)])
        again = await client.record_return("ret-1", "s2", [("a", 2)])
        assert got.lines == again.lines == (ReturnLine("a", 2, StockState.RETURNED),)
        assert not got.replayed and again.replayed
        states = await client.stock_states(["a"], ["s2"])
        assert states[("s2", "a")][StockState.RETURNED] == 2
        t = int(time.time() * 1000)
        moved = dict(from_state=StockState.RETURNED, to_state=StockState.SELLABLE)
        assert await client.move_units("insp-1", "s2", "a", 2, t, **moved)
        assert not await client.move_units("insp-1", "s2", "a", 2, t, **moved)
        (level,) = await client.availability(["a"], location_ids=["s2"])
        assert level.available == 2
        assert await client.set_return_rule(location_id="s1", to_sellable=True) >= 1
        straight = await client.record_return("ret-2", "s1", [("a", 1)])
        assert straight.lines[0].state is StockState.SELLABLE
