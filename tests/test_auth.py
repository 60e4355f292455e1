"""Who may do what, over real gRPC: bearer tokens and client certificates, every role
against every RPC, location scopes, reservation ownership, a storefront's caps, per-principal
limits, token rotation without a restart, TLS, and where an open server may listen."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import redis.asyncio as aioredis
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import AuthenticationError, NoPermissionError

from engine.api.edge import LIGHT_REQUEST
from engine.api.listener import ListenRefused
from engine.app import Omnistock, create_server
from engine.client import OmnistockClient
from engine.domain.auth import RIGHTS, AuthFileError, Principals, Role, token_digest
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.embedded import EmbeddedRedis
from engine.store.keys import ACL_RULES
from engine.workers import handling

from .conftest import settings_for
from .grpc_helpers import Stubs, count, delta, line, location
from .processes import SERVING, ServerProcess, eventually, health_status, listening

ROLES = {role: f"token-{role.value}" for role in Role}


def principals_file(path: Path, extra: str = "", tokens: dict[Role, str] | None = None) -> Path:
    """One principal of each role (named after it, every location), then `extra`."""
    entries = [
        f'[[principal]]\nname = "{role.value}"\nrole = "{role.value}"\n'
        f'token_sha256 = "{token_digest(token)}"\n'
        for role, token in (tokens or ROLES).items()
    ]
    path.write_text("\n".join(entries) + extra)
    return path


def scoped(name: str, role: str, token: str, locations: list[str]) -> str:
    listed = ", ".join(f'"{loc}"' for loc in locations)
    return (
        f'\n[[principal]]\nname = "{name}"\nrole = "{role}"\nlocations = [{listed}]\n'
        f'token_sha256 = "{token_digest(token)}"\n'
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def secured(
    redis: Any, one_redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Omnistock]:
    """A server with one principal of each role, a till at L1 and a storefront pair."""
    extra = scoped("till-1", "pos", "till-token", ["L1"]) + scoped(
        "feed-1", "ingest", "feed-token", ["L1"]
    )
    extra += (
        f'\n[[principal]]\nname = "shop-b"\nrole = "storefront"\n'
        f'token_sha256 = "{token_digest("shop-b-token")}"\n'
    )
    overrides = getattr(request, "param", {})
    app = create_server(
        settings_for(
            one_redis_url, auth_file=principals_file(tmp_path / "auth.toml", extra), **overrides
        )
    )
    await app.start()
    admin = bearer(ROLES[Role.ADMIN])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stubs = Stubs(channel)
        await stubs.stock.UpsertLocations(
            pb.UpsertLocationsRequest(locations=[location("L1"), location("L2")]), metadata=admin
        )
        events = [count("seed-1", "L1", "S1", 100), count("seed-2", "L2", "S1", 100)]
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events), metadata=admin)
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def channel_to(secured: Omnistock) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        yield channel


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# One call of each RPC, for the role matrix: what an allowed role gets does not matter here
# (OK, NOT_FOUND, INVALID_ARGUMENT...), only whether the role was let through.
async def _watch(stubs: Stubs, md: Any) -> None:
    request = pb.WatchAvailabilityRequest(location_ids=["L1"], skus=["S1"], send_current=True)
    stream = stubs.availability.WatchAvailability(request, metadata=md)
    await stream.read()
    stream.cancel()


async def _stream_events(stubs: Stubs, md: Any) -> None:
    call = stubs.stock.StreamEvents(metadata=md)
    await call.write(pb.StreamEventsRequest(events=[count("m-1", "L1", "S1", 100)]))
    await call.read()
    await call.done_writing()


async def _count(stubs: Stubs, md: Any) -> None:
    header = pb.CountHeader(location_id="L1", count_id="c1", counted_at=int(time.time() * 1000))
    messages = [
        pb.ReconcileCountRequest(header=header, lines=[pb.CountLine(sku="S1", qty=100)], end=True)
    ]
    await stubs.stock.ReconcileCount(iter(messages), metadata=md)


CALLS: dict[str, Callable[[Stubs, Any], Awaitable[Any]]] = {
    "GetAvailability": lambda s, md: s.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"]), metadata=md
    ),
    "FindNearby": lambda s, md: s.availability.FindNearby(
        pb.FindNearbyRequest(
            latitude=51.5, longitude=-0.12, radius_km=5, lines=[pb.BasketLine(sku="S1", qty=1)]
        ),
        metadata=md,
    ),
    "WatchAvailability": _watch,
    "Reserve": lambda s, md: s.reservations.Reserve(
        pb.ReserveRequest(reservation_id="m-r", lines=[line("L1", "S1", 1)]), metadata=md
    ),
    "Commit": lambda s, md: s.reservations.Commit(
        pb.CommitRequest(reservation_id="nope"), metadata=md
    ),
    "Release": lambda s, md: s.reservations.Release(
        pb.ReleaseRequest(reservation_id="nope"), metadata=md
    ),
    "Extend": lambda s, md: s.reservations.Extend(
        pb.ExtendRequest(reservation_id="nope", ttl_seconds=60), metadata=md
    ),
    "GetReservation": lambda s, md: s.reservations.GetReservation(
        pb.GetReservationRequest(reservation_id="nope"), metadata=md
    ),
    "MoveLine": lambda s, md: s.reservations.MoveLine(
        pb.MoveLineRequest(
            reservation_id="nope", move_id="m1", location_id="L1", sku="S1", to_location_id="L2"
        ),
        metadata=md,
    ),
    "Allocate": lambda s, md: s.sourcing.Allocate(
        pb.AllocateRequest(latitude=51.5, longitude=-0.12, lines=[pb.BasketLine(sku="S1", qty=1)]),
        metadata=md,
    ),
    "UpsertLocations": lambda s, md: s.stock.UpsertLocations(
        pb.UpsertLocationsRequest(locations=[location("L1")]), metadata=md
    ),
    "SetSafetyStock": lambda s, md: s.stock.SetSafetyStock(
        pb.SetSafetyStockRequest(entries=[pb.SafetyStockEntry(location_id="L1", sku="S1", qty=0)]),
        metadata=md,
    ),
    "ApplyEvents": lambda s, md: s.stock.ApplyEvents(
        pb.ApplyEventsRequest(events=[count("m-2", "L1", "S1", 100)]), metadata=md
    ),
    "StreamEvents": _stream_events,
    "ReconcileCount": _count,
    "SetMappings": lambda s, md: s.stock.SetMappings(
        pb.SetMappingsRequest(
            mappings=[pb.Mapping(source="m", kind=pb.MAPPING_KIND_ITEM, external_id="x", id="S1")]
        ),
        metadata=md,
    ),
    "SetChannelRules": lambda s, md: s.stock.SetChannelRules(
        pb.SetChannelRulesRequest(rules=[pb.ChannelRule(channel="web", buffer=1)]), metadata=md
    ),
    "SetPool": lambda s, md: s.stock.SetPool(
        pb.SetPoolRequest(pools=[pb.Pool(location_id="L1", sku="S1", channel="app", units=1)]),
        metadata=md,
    ),
    "SetStockBands": lambda s, md: s.stock.SetStockBands(
        pb.SetStockBandsRequest(bands=[pb.StockBand(low=2)]), metadata=md
    ),
    "SetCustomerLimits": lambda s, md: s.stock.SetCustomerLimits(
        pb.SetCustomerLimitsRequest(
            limits=[pb.CustomerLimit(sku="a", max_units=2, window_seconds=60)]
        ),
        metadata=md,
    ),
    "SetBundles": lambda s, md: s.stock.SetBundles(
        pb.SetBundlesRequest(
            bundles=[pb.Bundle(sku="m-kit", components=[pb.BundleComponent(sku="S1", qty=2)])]
        ),
        metadata=md,
    ),
    "UpsertNetworks": lambda s, md: s.stock.UpsertNetworks(
        pb.UpsertNetworksRequest(networks=[pb.Network(name="m-net", location_ids=["L1"])]),
        metadata=md,
    ),
    "RecordReturn": lambda s, md: s.stock.RecordReturn(
        pb.RecordReturnRequest(
            return_id="m-ret", location_id="L1", lines=[pb.ReturnLine(sku="S1", qty=1)]
        ),
        metadata=md,
    ),
    "SetReturnRules": lambda s, md: s.stock.SetReturnRules(
        pb.SetReturnRulesRequest(rules=[pb.ReturnRule(location_id="L1", to_sellable=True)]),
        metadata=md,
    ),
    "GetNetworkAvailability": lambda s, md: s.availability.GetNetworkAvailability(
        pb.GetNetworkAvailabilityRequest(network="m-net", skus=["S1"]), metadata=md
    ),
    "GetRow": lambda s, md: s.operator.GetRow(
        pb.GetRowRequest(location_id="L1", sku="S1"), metadata=md
    ),
    "GetLocation": lambda s, md: s.operator.GetLocation(
        pb.GetLocationRequest(location_id="L1"), metadata=md
    ),
    "ListSources": lambda s, md: s.operator.ListSources(pb.ListSourcesRequest(), metadata=md),
    "ListAlerts": lambda s, md: s.operator.ListAlerts(pb.ListAlertsRequest(), metadata=md),
    "ListDeadLetters": lambda s, md: s.operator.ListDeadLetters(
        pb.ListDeadLettersRequest(), metadata=md
    ),
    "DeleteDeadLetters": lambda s, md: s.operator.DeleteDeadLetters(
        pb.DeleteDeadLettersRequest(ids=["1-1"]), metadata=md
    ),
    "GetPromise": lambda s, md: s.availability.GetPromise(
        pb.GetPromiseRequest(skus=["S1"], location_ids=["L1"]), metadata=md
    ),
    "UpsertSupply": lambda s, md: s.stock.UpsertSupply(
        pb.UpsertSupplyRequest(
            supplies=[
                pb.Supply(supply_id="m-po", location_id="L1", sku="S1", qty=1, expected_at=SOON)
            ]
        ),
        metadata=md,
    ),
    "CreateTransfer": lambda s, md: s.stock.CreateTransfer(
        pb.CreateTransferRequest(
            transfer_id="m-tr",
            from_location_id="L1",
            to_location_id="L2",
            lines=[pb.TransferLine(sku="S1", qty=1)],
            expected_at=SOON,
        ),
        metadata=md,
    ),
    "ShipTransfer": lambda s, md: s.stock.ShipTransfer(
        pb.ShipTransferRequest(transfer_id="m-none"), metadata=md
    ),
    "ReceiveTransfer": lambda s, md: s.stock.ReceiveTransfer(
        pb.ReceiveTransferRequest(transfer_id="m-none"), metadata=md
    ),
    "CancelTransfer": lambda s, md: s.stock.CancelTransfer(
        pb.CancelTransferRequest(transfer_id="m-none"), metadata=md
    ),
}
SOON = int(time.time() * 1000) + 24 * 3600 * 1000


def test_every_rpc_has_rights_and_a_call_in_the_matrix() -> None:
    services = pb.DESCRIPTOR.services_by_name.values()
    methods = {m.name for service in services for m in service.methods}
    assert set(RIGHTS) == methods == set(CALLS)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
async def test_each_role_may_call_exactly_its_rpcs(
    channel_to: grpc.aio.Channel, role: Role
) -> None:
    stubs = Stubs(channel_to)
    for method, call in CALLS.items():
        got = await code_of(call(stubs, bearer(ROLES[role])))
        allowed = role in RIGHTS[method]
        assert (got != grpc.StatusCode.PERMISSION_DENIED) == allowed, (method, got)
        assert got not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, got)


async def test_a_caller_without_a_known_token_is_unauthenticated_and_health_is_open(
    channel_to: grpc.aio.Channel, secured: Omnistock
) -> None:
    stubs = Stubs(channel_to)
    for md in ((), bearer("not-a-token"), (("authorization", "Basic abc"),)):
        assert await code_of(CALLS["GetAvailability"](stubs, md)) == grpc.StatusCode.UNAUTHENTICATED
    health = await health_pb2_grpc.HealthStub(channel_to).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    labels = {"reason": "unauthenticated"}
    assert secured.metrics.registry.get_sample_value("omnistock_refused_total", labels) == 3


async def test_a_till_ships_from_and_receives_at_its_own_store_only(
    channel_to: grpc.aio.Channel,
) -> None:
    stubs, till, admin = Stubs(channel_to), bearer("till-token"), bearer(ROLES[Role.ADMIN])
    transfer = pb.CreateTransferRequest(
        transfer_id="to-L1",
        from_location_id="L2",
        to_location_id="L1",
        lines=[pb.TransferLine(sku="S1", qty=1)],
        expected_at=SOON,
    )
    await stubs.stock.CreateTransfer(transfer, metadata=admin)
    ship = stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="to-L1"), metadata=till)
    assert await code_of(ship) == grpc.StatusCode.PERMISSION_DENIED  # it leaves L2
    await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="to-L1"), metadata=admin)
    own = pb.CreateTransferRequest()
    own.CopyFrom(transfer)
    own.transfer_id, own.from_location_id, own.to_location_id = "from-L1", "L1", "L2"
    await stubs.stock.CreateTransfer(own, metadata=admin)
    shipped = await stubs.stock.ShipTransfer(
        pb.ShipTransferRequest(transfer_id="from-L1"), metadata=till
    )  # it leaves L1
    assert shipped.state == pb.TRANSFER_STATE_SHIPPED
    got = await stubs.stock.ReceiveTransfer(
        pb.ReceiveTransferRequest(transfer_id="to-L1"), metadata=till
    )  # it arrives at L1
    assert got.state == pb.TRANSFER_STATE_RECEIVED


async def test_a_till_acts_only_at_its_own_location(channel_to: grpc.aio.Channel) -> None:
    stubs, till = Stubs(channel_to), bearer("till-token")
    # a hold at its store is fine; one at another store is refused, naming the field
    held = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="t1", lines=[line("L1", "S1", 1)]), metadata=till
    )
    assert held.reservation.state == pb.RESERVATION_STATE_HELD
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="t2", lines=[line("L2", "S1", 1)]), metadata=till
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lines[].location_id" in (err.value.details() or "") and "L2" in (
        err.value.details() or ""
    )
    # events: refused in a batch, rejected one by one on a stream
    got = await code_of(
        stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[count("x1", "L2", "S1", 1)]), metadata=till
        )
    )
    assert got == grpc.StatusCode.PERMISSION_DENIED
    call = stubs.stock.StreamEvents(metadata=till)
    await call.write(
        pb.StreamEventsRequest(events=[count("x2", "L1", "S1", 7), count("x3", "L2", "S1", 7)])
    )
    acks = (await call.read()).acks
    await call.done_writing()
    assert [a.outcome for a in acks] == [pb.EVENT_OUTCOME_APPLIED, pb.EVENT_OUTCOME_REJECTED]
    assert "L2" in acks[1].reason
    # a count of another store
    header = pb.CountHeader(location_id="L2", count_id="c", counted_at=int(time.time() * 1000))
    message = pb.ReconcileCountRequest(
        header=header, lines=[pb.CountLine(sku="S1", qty=1)], end=True
    )
    got = await code_of(stubs.stock.ReconcileCount(iter([message]), metadata=till))
    assert got == grpc.StatusCode.PERMISSION_DENIED
    # a return taken at another store (a return at its own, whoever sold the units, is fine)
    lines = [pb.ReturnLine(sku="S1", qty=1)]
    at_l2 = pb.RecordReturnRequest(return_id="rt1", location_id="L2", lines=lines)
    got = await code_of(stubs.stock.RecordReturn(at_l2, metadata=till))
    assert got == grpc.StatusCode.PERMISSION_DENIED
    at_l1 = pb.RecordReturnRequest(return_id="rt1", location_id="L1", lines=lines)
    assert await code_of(stubs.stock.RecordReturn(at_l1, metadata=till)) == grpc.StatusCode.OK
    # and L2's row is untouched
    admin = bearer(ROLES[Role.ADMIN])
    levels = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L2"]), metadata=admin
    )
    assert (levels.levels[0].on_hand, levels.levels[0].reserved) == (100, 0)


async def test_a_reservation_belongs_to_the_principal_that_made_it(
    channel_to: grpc.aio.Channel,
) -> None:
    stubs = Stubs(channel_to)
    a, b = bearer(ROLES[Role.STOREFRONT]), bearer("shop-b-token")
    request = pb.ReserveRequest(reservation_id="cart-1", lines=[line("L1", "S1", 2)])
    await stubs.reservations.Reserve(request, metadata=a)
    # another storefront cannot see, settle or extend it: NOT_FOUND, as for no such id
    for call in (
        stubs.reservations.GetReservation(
            pb.GetReservationRequest(reservation_id="cart-1"), metadata=b
        ),
        stubs.reservations.Commit(pb.CommitRequest(reservation_id="cart-1"), metadata=b),
        stubs.reservations.Release(pb.ReleaseRequest(reservation_id="cart-1"), metadata=b),
        stubs.reservations.Extend(
            pb.ExtendRequest(reservation_id="cart-1", ttl_seconds=60), metadata=b
        ),
        stubs.reservations.MoveLine(
            pb.MoveLineRequest(
                reservation_id="cart-1",
                move_id="m1",
                location_id="L1",
                sku="S1",
                to_location_id="L2",
            ),
            metadata=b,
        ),
    ):
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    # its id with the same lines is not its to retry
    assert await code_of(stubs.reservations.Reserve(request, metadata=b)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    # its maker and fulfilment see it; admin commits it
    for md in (a, bearer(ROLES[Role.FULFILMENT])):
        got = await stubs.reservations.GetReservation(
            pb.GetReservationRequest(reservation_id="cart-1"), metadata=md
        )
        assert got.state == pb.RESERVATION_STATE_HELD
    done = await stubs.reservations.Commit(
        pb.CommitRequest(reservation_id="cart-1"), metadata=bearer(ROLES[Role.ADMIN])
    )
    assert done.state == pb.RESERVATION_STATE_COMMITTED


@pytest.mark.parametrize(
    "secured", [{"storefront_max_held_units": 5, "storefront_max_ttl_seconds": 600}], indirect=True
)
async def test_a_storefront_holds_within_its_units_and_its_longest_hold(
    channel_to: grpc.aio.Channel,
) -> None:
    stubs, shop = Stubs(channel_to), bearer(ROLES[Role.STOREFRONT])

    def hold(rid: str, qty: int, ttl: float = 0) -> Awaitable[Any]:
        request = pb.ReserveRequest(
            reservation_id=rid, lines=[line("L1", "S1", qty)], ttl_seconds=ttl
        )
        return stubs.reservations.Reserve(request, metadata=shop)

    assert await code_of(hold("c1", 3, ttl=601)) == grpc.StatusCode.INVALID_ARGUMENT
    first = await hold("c1", 3)
    assert first.reservation.expires_at - time.time() * 1000 <= 600_000  # capped default
    assert await code_of(hold("c2", 3)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await code_of(hold("c1", 3)) == grpc.StatusCode.OK  # a retry is not counted twice
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="c1"), metadata=shop)
    assert (await hold("c2", 5)).reservation.state == pb.RESERVATION_STATE_HELD
    # fulfilment has no such cap
    request = pb.ReserveRequest(reservation_id="o1", lines=[line("L1", "S1", 50)])
    await stubs.reservations.Reserve(request, metadata=bearer(ROLES[Role.FULFILMENT]))


async def test_a_storefront_names_the_customer_to_hold_a_limited_sku(
    channel_to: grpc.aio.Channel,
) -> None:
    stubs, shop = Stubs(channel_to), bearer(ROLES[Role.STOREFRONT])
    limit = pb.CustomerLimit(sku="S1", max_units=2, window_seconds=3600)
    await stubs.stock.SetCustomerLimits(
        pb.SetCustomerLimitsRequest(limits=[limit]), metadata=bearer(ROLES[Role.ADMIN])
    )

    def hold(rid: str, customer: str, md: Any = shop) -> Awaitable[Any]:
        request = pb.ReserveRequest(
            reservation_id=rid, lines=[line("L1", "S1", 1)], customer_id=customer
        )
        return stubs.reservations.Reserve(request, metadata=md)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hold("c1", "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("customer_id: S1 is limited per customer")
    assert (await hold("c1", "ann")).reservation.state == pb.RESERVATION_STATE_HELD
    # a till or fulfilment holds for whoever is there: no customer needed
    assert await code_of(hold("t1", "", bearer(ROLES[Role.FULFILMENT]))) == grpc.StatusCode.OK


@pytest.mark.parametrize("secured", [{"max_streams_per_principal": 2}], indirect=True)
async def test_a_principal_has_at_most_its_streams_open(channel_to: grpc.aio.Channel) -> None:
    stubs, md = Stubs(channel_to), bearer(ROLES[Role.STOREFRONT])
    request = pb.WatchAvailabilityRequest(location_ids=["L1"], skus=["S1"], send_current=True)
    open_ = [stubs.availability.WatchAvailability(request, metadata=md) for _ in range(2)]
    for stream in open_:
        await stream.read()
    third = stubs.availability.WatchAvailability(request, metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await third.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # another principal is not held back by it, and a closed stream frees its place
    await _watch(stubs, bearer(ROLES[Role.POS]))
    open_[0].cancel()
    for _ in range(100):
        if await code_of(_watch(stubs, md)) == grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("a closed stream did not free its place")
    open_[1].cancel()


@pytest.mark.parametrize("secured", [{"rate_limit": 5.0}], indirect=True)
async def test_a_principal_over_its_rate_is_resource_exhausted(
    channel_to: grpc.aio.Channel,
) -> None:
    stubs = Stubs(channel_to)
    codes = [
        await code_of(CALLS["GetAvailability"](stubs, bearer(ROLES[Role.STOREFRONT])))
        for _ in range(20)
    ]
    assert codes.count(grpc.StatusCode.OK) <= 6  # a second's worth, and what refilled meanwhile
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # another principal has its own
    assert await code_of(CALLS["GetAvailability"](stubs, bearer(ROLES[Role.POS]))) == (
        grpc.StatusCode.OK
    )


@pytest.mark.parametrize("secured", [{"ingest_rate": 1000.0}], indirect=True)
async def test_a_principal_over_its_ingest_rate_is_slowed_down_not_refused(
    channel_to: grpc.aio.Channel, secured: Omnistock
) -> None:
    stubs = Stubs(channel_to)

    def paced() -> float:
        value = secured.metrics.registry.get_sample_value("omnistock_ingest_paced_seconds_total")
        return value or 0.0

    def events(prefix: str, n: int) -> list[pb.StockEvent]:
        now = int(time.time() * 1000)
        return [delta(f"{prefix}-{i}", "L1", "S1", 1, t=now) for i in range(n)]

    feed = bearer(ROLES[Role.INGEST])
    # a second's worth passes at once; 1,500 more wait for what did not refill meanwhile
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events("a", 1000)), metadata=feed)
    assert paced() == 0.0
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events("b", 1500)), metadata=feed)
    assert paced() > 0.0
    # another principal has its own
    before = paced()
    till = bearer("till-token")
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events("c", 500)), metadata=till)
    assert paced() == before
    # a stream is slowed where it is read, and every event of it applied: 2,500 events
    # are more than a full bucket (1,000) and what refills while they are read, however
    # long the calls before took (a machine under load once refilled it whole)
    requests = [pb.StreamEventsRequest(events=events(f"d{k}", 500)) for k in range(5)]
    acks = [ack async for ack in stubs.stock.StreamEvents(iter(requests), metadata=feed)]
    assert [{a.outcome for a in ack.acks} for ack in acks] == [{pb.EVENT_OUTCOME_APPLIED}] * 5
    assert paced() > before
    row = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"]),
        metadata=bearer(ROLES[Role.ADMIN]),
    )
    assert row.levels[0].on_hand == 100 + 1000 + 1500 + 500 + 2500


async def test_tokens_rotate_without_a_restart(
    channel_to: grpc.aio.Channel, secured: Omnistock
) -> None:
    # given the admin's token replaced in the file
    stubs = Stubs(channel_to)
    path = secured.settings.auth_file
    assert path is not None
    principals_file(path, tokens={**ROLES, Role.ADMIN: "rotated"})
    # then within a few seconds the new one works and the old one no longer does
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if await code_of(CALLS["GetAvailability"](stubs, bearer("rotated"))) == grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.1)
    assert await code_of(CALLS["GetAvailability"](stubs, bearer("rotated"))) == grpc.StatusCode.OK
    old = await code_of(CALLS["GetAvailability"](stubs, bearer(ROLES[Role.ADMIN])))
    assert old == grpc.StatusCode.UNAUTHENTICATED
    # a file that does not load keeps the principals it had
    path.write_text("[[principal]]\nname = 'x'\nrole = 'emperor'\n")
    secured.reload_auth()
    assert await code_of(CALLS["GetAvailability"](stubs, bearer("rotated"))) == grpc.StatusCode.OK


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, tmp: Path) -> dict[str, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"tls_cert": tmp / "server.pem", "tls_key": tmp / "server.key"}
    cert.private_key_pem.write_to_path(str(files["tls_key"]))
    cert.cert_chain_pems[0].write_to_path(str(files["tls_cert"]))
    return files


async def test_tls_serves_to_a_client_that_trusts_it_and_not_in_plaintext(
    one_redis_url: str, tmp_path: Path, ca: trustme.CA
) -> None:
    settings = settings_for(
        one_redis_url, auth_file=principals_file(tmp_path / "a.toml"), **tls_files(ca, tmp_path)
    )
    app = create_server(settings)
    await app.start()
    try:
        creds = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{app.port}", creds) as channel:
            await Stubs(channel).stock.UpsertLocations(
                pb.UpsertLocationsRequest(locations=[location("T1")]),
                metadata=bearer(ROLES[Role.ADMIN]),
            )
        async with OmnistockClient(
            f"127.0.0.1:{app.port}", token=ROLES[Role.STOREFRONT], tls=creds, attempts=1
        ) as client:
            levels = await client.availability(["S1"], location_ids=["T1"])
            assert [(a.location, a.sku) for a in levels] == [("T1", "S1")]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as plain:
            got = await code_of(
                CALLS["GetAvailability"](Stubs(plain), bearer(ROLES[Role.STOREFRONT]))
            )
            assert got == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(grace=1.0)


async def test_mutual_tls_names_the_principal_by_its_certificate(
    one_redis_url: str, tmp_path: Path, ca: trustme.CA
) -> None:
    extra = '\n[[principal]]\nname = "till-9"\nrole = "pos"\nlocations = ["L9"]\n'
    settings = settings_for(
        one_redis_url,
        auth_file=principals_file(tmp_path / "a.toml", extra),
        tls_client_ca=tmp_path / "ca.pem",
        **tls_files(ca, tmp_path),
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    app = create_server(settings)
    await app.start()
    till = ca.issue_cert("till-9", common_name="till-9")
    try:
        creds = grpc.ssl_channel_credentials(
            ca.cert_pem.bytes(), till.private_key_pem.bytes(), till.cert_chain_pems[0].bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{app.port}", creds) as channel:
            stubs = Stubs(channel)
            # no token: the certificate names till-9, a pos at L9 only
            got = await code_of(CALLS["GetAvailability"](stubs, ()))
            assert got in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)  # let through
            denied = await code_of(CALLS["Reserve"](stubs, ()))
            assert denied == grpc.StatusCode.PERMISSION_DENIED
        no_cert = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{app.port}", no_cert) as channel:
            got = await code_of(CALLS["GetAvailability"](Stubs(channel), ()))
            assert got == grpc.StatusCode.UNAVAILABLE  # the handshake is refused
    finally:
        await app.stop(grace=1.0)


async def test_an_open_server_refuses_to_listen_beyond_loopback(one_redis_url: str) -> None:
    app = create_server(settings_for(one_redis_url, listen="0.0.0.0:0"))
    with pytest.raises(ListenRefused):
        await app.start()
    await app.stop(grace=0.1)
    forced = create_server(settings_for(one_redis_url, listen="0.0.0.0:0", insecure=True))
    await forced.start()
    await forced.stop(grace=0.1)


# -- the Redis ACL user -------------------------------------------------------------------


async def test_the_engine_runs_as_its_redis_acl_user(redis: Any, one_redis_url: str) -> None:
    # given a Redis user with the engine's ACL only
    await redis.execute_command(
        "ACL", "SETUSER", "omnistock-acl", "on", ">acl-pw", *ACL_RULES.split()
    )
    url = urlsplit(one_redis_url)
    as_user = f"redis://omnistock-acl:acl-pw@{url.hostname}:{url.port}/0"
    app = create_server(settings_for(as_user, no_band_alerts=False))
    try:
        await app.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await every_kind_of_call(Stubs(channel))
            await a_band_crossing_is_alerted(Stubs(channel))
        # and that user can neither wipe the store nor read a key that is not the engine's
        user = aioredis.Redis.from_url(as_user)
        for command in (("FLUSHALL",), ("GET", "other-key"), ("CONFIG", "GET", "dir")):
            with pytest.raises(NoPermissionError):
                await user.execute_command(*command)
        await user.aclose()
    finally:
        await app.stop(grace=1.0)
        await redis.execute_command("ACL", "DELUSER", "omnistock-acl")


async def every_kind_of_call(stubs: Stubs) -> None:
    """Each RPC once, each answered OK (as the engine's ACL user, none may be refused)."""
    locations = [location("A1"), location("A2")]
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=locations))
    events = [count("a-1", "A1", "S1", 10), count("a-2", "A2", "S1", 10)]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
    await _stream_events_at(stubs, "A1")
    await stubs.stock.SetSafetyStock(
        pb.SetSafetyStockRequest(entries=[pb.SafetyStockEntry(location_id="A1", sku="S1", qty=1)])
    )
    mapping = pb.Mapping(source="pos", kind=pb.MAPPING_KIND_ITEM, external_id="x", id="S1")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[mapping]))
    header = pb.CountHeader(location_id="A2", count_id="c", counted_at=int(time.time() * 1000))
    message = pb.ReconcileCountRequest(
        header=header, lines=[pb.CountLine(sku="S1", qty=10)], end=True
    )
    await stubs.stock.ReconcileCount(iter([message]))
    watch = pb.WatchAvailabilityRequest(location_ids=["A1"], skus=["S1"], send_current=True)
    stream = stubs.availability.WatchAvailability(watch)
    await stream.read()
    limit = pb.CustomerLimit(sku="S1", max_units=5, window_seconds=60)
    await stubs.stock.SetCustomerLimits(pb.SetCustomerLimitsRequest(limits=[limit]))
    for rid, lines in (
        ("one", [line("A1", "S1", 1)]),
        ("two", [line("A1", "S1", 1), line("A2", "S1", 1)]),
    ):
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=lines, customer_id="cust-1")
        )
    changed = await stream.read()  # the hold's row change, through the shard channel
    assert changed.level.reserved >= 1
    stream.cancel()
    await stubs.reservations.Extend(pb.ExtendRequest(reservation_id="one", ttl_seconds=60))
    await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="one"))
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="one"))
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="two"))
    await stubs.sourcing.Allocate(
        pb.AllocateRequest(
            latitude=51.5, longitude=-0.12, lines=[pb.BasketLine(sku="S1", qty=1)],
            reserve=True, reservation_id="order-1",
        )
    )  # fmt: skip
    await stubs.availability.FindNearby(
        pb.FindNearbyRequest(latitude=51.5, longitude=-0.12, radius_km=5, lines=[
            pb.BasketLine(sku="S1", qty=1)
        ])
    )  # fmt: skip
    # a channel's rule and pool, and a hold and a read for that channel
    await stubs.stock.SetChannelRules(
        pb.SetChannelRulesRequest(rules=[pb.ChannelRule(channel="web", max_share=0.5)])
    )
    await stubs.stock.SetPool(
        pb.SetPoolRequest(pools=[pb.Pool(location_id="A1", sku="S1", channel="web", units=1)])
    )
    await stubs.stock.SetStockBands(pb.SetStockBandsRequest(bands=[pb.StockBand(low=2)]))
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="web-1", lines=[line("A1", "S1", 1)], channel="web")
    )
    await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["S1"], location_ids=["A1"], channel="web")
    )
    # a network of both, and what the web may hold across it (read, then kept and followed)
    await stubs.stock.UpsertNetworks(
        pb.UpsertNetworksRequest(
            networks=[pb.Network(name="both", selectors=[pb.LocationSelector(types=[1])])]
        )
    )
    for _ in range(2):
        await stubs.availability.GetNetworkAvailability(
            pb.GetNetworkAvailabilityRequest(network="both", skus=["S1"], channel="web")
        )
    # future supply, a promise, and transfers: one received, one cancelled after shipping
    soon = int(time.time() * 1000) + 24 * 3600 * 1000
    supply = pb.Supply(supply_id="po-1", location_id="A2", sku="S1", qty=3, expected_at=soon)
    await stubs.stock.UpsertSupply(pb.UpsertSupplyRequest(supplies=[supply]))
    for tid in ("tr-1", "tr-2"):
        await stubs.stock.CreateTransfer(
            pb.CreateTransferRequest(
                transfer_id=tid, from_location_id="A2", to_location_id="A1",
                lines=[pb.TransferLine(sku="S1", qty=1)], expected_at=soon,
            )
        )  # fmt: skip
        await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id=tid))
    promised = await stubs.availability.GetPromise(
        pb.GetPromiseRequest(skus=["S1"], location_ids=["A1", "A2"])
    )
    assert [p.incoming for p in promised.promises] == [2, 3]
    await stubs.stock.ReceiveTransfer(pb.ReceiveTransferRequest(transfer_id="tr-1"))
    await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="tr-2"))
    # the operators' calls (the source figures and alerts: written by the same user)
    await stubs.operator.GetRow(pb.GetRowRequest(location_id="A1", sku="S1"))
    await stubs.operator.GetLocation(pb.GetLocationRequest(location_id="A1"))
    assert (await stubs.operator.ListSources(pb.ListSourcesRequest())).sources
    await stubs.operator.ListAlerts(pb.ListAlertsRequest())
    letters = await stubs.operator.ListDeadLetters(pb.ListDeadLettersRequest())
    await stubs.operator.DeleteDeadLetters(
        pb.DeleteDeadLettersRequest(ids=[d.id for d in letters.letters] or ["1-1"])
    )
    # a short hold is expired by the sweeper, which runs as the same user
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="brief", lines=[line("A2", "S1", 1)], ttl_seconds=0.2)
    )
    for _ in range(100):
        got = await stubs.reservations.GetReservation(
            pb.GetReservationRequest(reservation_id="brief")
        )
        if got.state == pb.RESERVATION_STATE_EXPIRED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the sweeper did not expire the hold")


async def a_band_crossing_is_alerted(stubs: Stubs) -> None:
    """The band crossings' detector, running as the same user, checks a row (touched until it
    has: its band noted), then alerts its fall into LOW (every band LOW at 2 by now)."""
    row = pb.GetRowRequest(location_id="A1", sku="S2")
    for i in range(200):
        if (await stubs.operator.GetRow(row)).detected_bands:
            break
        rid = f"touch-{i}"
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line("A1", "S2", 1)])
        )
        await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid))
        await asyncio.sleep(0.1)
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="falls", lines=[line("A1", "S2", 3)])
    )
    for _ in range(200):
        alerts = (await stubs.operator.ListAlerts(pb.ListAlertsRequest())).alerts
        if [a.details["status"] for a in alerts if a.kind == "band"] == ["LOW"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no band crossing was alerted")


async def _stream_events_at(stubs: Stubs, loc: str) -> None:
    call = stubs.stock.StreamEvents()
    await call.write(pb.StreamEventsRequest(events=[count("a-3", loc, "S2", 5)]))
    assert (await call.read()).acks[0].outcome == pb.EVENT_OUTCOME_APPLIED
    await call.done_writing()


async def test_the_embedded_store_asks_for_a_password_kept_in_owner_only_files(
    tmp_path: Path,
) -> None:
    store = EmbeddedRedis(tmp_path / "store")
    store.start()
    try:
        for name in ("redis.conf", "redis.url"):
            assert (tmp_path / "store" / name).stat().st_mode & 0o777 == 0o600, name
        anonymous = aioredis.Redis(port=store.port)
        with pytest.raises(AuthenticationError):
            await anonymous.ping()
        await anonymous.aclose()
        with_password = aioredis.Redis.from_url((tmp_path / "store" / "redis.url").read_text())
        assert await with_password.ping()
        await with_password.aclose()
        # and a restart on the same state keeps it (the adapters hold the URL)
        before = store.url
        store.stop()
        store.start()
        assert store.url == before
    finally:
        store.stop()


async def test_a_scoped_ingest_maps_only_to_its_own_locations(channel_to: grpc.aio.Channel) -> None:
    stubs, feed = Stubs(channel_to), bearer("feed-token")

    def mapping(ours: str) -> pb.SetMappingsRequest:
        m = pb.Mapping(source="pos", kind=pb.MAPPING_KIND_LOCATION, external_id="7", id=ours)
        return pb.SetMappingsRequest(mappings=[m])

    assert await code_of(stubs.stock.SetMappings(mapping("L1"), metadata=feed)) == (
        grpc.StatusCode.OK
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.SetMappings(mapping("L2"), metadata=feed)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "mappings[0].id" in (err.value.details() or "")


async def test_sighup_reloads_the_auth_file_of_a_running_server(
    spawn: Callable[..., ServerProcess], tmp_path: Path, one_redis_url: str
) -> None:
    # given a server process with principals, its admin token then replaced in the file
    # (with the file's old modification time, so that only the signal can reload it)
    path = principals_file(tmp_path / "auth.toml")
    service = spawn("--redis-url", one_redis_url, "--auth-file", str(path), "--metrics-port", "0")
    await service.start()
    before = path.stat()
    principals_file(path, tokens={**ROLES, Role.ADMIN: "after-hup"})
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stubs = Stubs(channel)

        async def answer(token: str) -> grpc.StatusCode:
            """A call refused for its field once let in: its answer tells only whether the
            token was taken. UNAVAILABLE (the server found its store slow to answer a probe,
            as on a loaded machine, and fails calls fast meanwhile) is asked again."""
            bad = pb.GetAvailabilityRequest(skus=["no spaces"], location_ids=["L1"])
            for _ in range(200):
                call = stubs.availability.GetAvailability(bad, metadata=bearer(token), timeout=10)
                code = await code_of(call)
                if code != grpc.StatusCode.UNAVAILABLE:
                    break
                await asyncio.sleep(0.05)
            return code

        assert await answer("after-hup") == grpc.StatusCode.UNAUTHENTICATED
        # when it is sent SIGHUP
        os.kill(service.pid, signal.SIGHUP)
        # then the new token is taken, and the old one no longer
        for _ in range(100):
            if await answer("after-hup") != grpc.StatusCode.UNAUTHENTICATED:
                break
            await asyncio.sleep(0.05)
        assert await answer("after-hup") == grpc.StatusCode.INVALID_ARGUMENT
        assert await answer(ROLES[Role.ADMIN]) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_starting_server_ignores_sighup_then_catches_it_before_it_listens(
    spawn: Callable[..., ServerProcess], tmp_path: Path, one_redis_url: str
) -> None:
    # given a server process starting (SIGHUP's default action ends a process, so a reload
    # sent by a deployment tool as the server comes up must never find it so; the imports
    # take most of a start)
    path = principals_file(tmp_path / "auth.toml")
    service = spawn("--redis-url", one_redis_url, "--auth-file", str(path))
    service.launch()
    # when how it takes SIGHUP is looked at every millisecond until its port takes a
    # connection
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        seen.append(handling(service.pid, signal.SIGHUP))  # read before the port is tried
        if listening(service.port):
            break
        assert service.process is not None and service.process.poll() is None, service.log_tail()
        assert time.monotonic() < deadline, "server did not listen within 60 s"
        await asyncio.sleep(0.001)
    # then once its own code runs, SIGHUP is ignored, then caught before the port listens:
    # never left to end it (before that, Python starting: 0.02 s here, against 0.45 s for
    # the imports)
    ours = seen[next(i for i, how in enumerate(seen) if how != "default") :]
    assert ours[0] == "ignored", seen
    assert "default" not in ours and ours[-1] == "caught", seen
    # and one sent now reloads the file and ends nothing
    service.signal(signal.SIGHUP)

    async def serving() -> bool:
        return await health_status(service.port) == SERVING

    assert await eventually(serving, within=20)
    assert service.process is not None and service.process.poll() is None


@pytest.mark.parametrize("secured", [{"request_bytes_rate": 100_000}], indirect=True)
async def test_a_principal_over_its_request_byte_rate_is_slowed_down_small_calls_are_not(
    channel_to: grpc.aio.Channel, secured: Omnistock
) -> None:
    """A flood of big requests costs the server their parsing, refused or not: past its
    byte rate a principal's big calls wait before their servicer runs."""
    stubs = Stubs(channel_to)

    def paced() -> float:
        name = "omnistock_request_bytes_paced_seconds_total"
        return secured.metrics.registry.get_sample_value(name) or 0.0

    def big(n: int, ids: int = 5000) -> pb.GetAvailabilityRequest:  # over the id cap
        names = [f"nowhere-{n}-{i:06d}" for i in range(ids)]
        return pb.GetAvailabilityRequest(skus=["S1"], location_ids=names)

    # 90 kB: over LIGHT_REQUEST, within a full bucket; and one larger than a full bucket,
    # which waits however much of it refilled meanwhile
    assert LIGHT_REQUEST < big(0).ByteSize() < 100_000 < big(1, ids=12_000).ByteSize()
    storefront = bearer(ROLES[Role.STOREFRONT])
    for request in (big(0), big(1, ids=12_000)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.availability.GetAvailability(request, metadata=storefront)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (paced() > 0.0) == (request.ByteSize() > 100_000)
    # a small call of the same principal does not wait for the debt
    before = paced()
    small = pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"])
    await stubs.availability.GetAvailability(small, metadata=storefront)
    assert paced() == before
    # another principal has its own
    with pytest.raises(grpc.aio.AioRpcError):
        await stubs.availability.GetAvailability(big(2), metadata=bearer(ROLES[Role.ADMIN]))
    assert paced() == before


# -- principals bound to sales channels ----------------------------------------------------


async def test_a_principal_bound_to_a_channel_acts_as_it_and_as_no_other(
    redis: Any, one_redis_url: str, tmp_path: Path
) -> None:
    # given a web shop's token bound to the web channel, which keeps a store's last 2 units
    shop = '\n[[principal]]\nname = "web-shop"\nrole = "storefront"\nchannels = ["web"]\n'
    shop += f'token_sha256 = "{token_digest("shop-token")}"\n'
    app = create_server(
        settings_for(one_redis_url, auth_file=principals_file(tmp_path / "p.toml", shop))
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs, admin, web = Stubs(channel), bearer(ROLES[Role.ADMIN]), bearer("shop-token")
            await stubs.stock.UpsertLocations(
                pb.UpsertLocationsRequest(locations=[location("L1")]), metadata=admin
            )
            await stubs.stock.ApplyEvents(
                pb.ApplyEventsRequest(events=[count("c1", "L1", "S1", 5)]), metadata=admin
            )
            rule = pb.ChannelRule(channel="web", buffer=2)
            await stubs.stock.SetChannelRules(
                pb.SetChannelRulesRequest(rules=[rule]), metadata=admin
            )
            # when it names no channel, it is the web: it sees and holds 3 of the 5
            seen = await stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"]), metadata=web
            )
            assert seen.levels[0].available == 3
            short = await stubs.reservations.Reserve(
                pb.ReserveRequest(reservation_id="w1", lines=[line("L1", "S1", 4)]), metadata=web
            )
            assert [s.available for s in short.shortfalls] == [3]
            # and it may not act as another channel
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stubs.reservations.Reserve(
                    pb.ReserveRequest(
                        reservation_id="w2", lines=[line("L1", "S1", 1)], channel="store"
                    ),
                    metadata=web,
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may not act as channel 'store'" in (err.value.details() or "")
    finally:
        await app.stop(grace=1.0)


@pytest.mark.parametrize("channels", ["[]", '"web"', "[1]", '["w b"]'])
def test_a_principals_channels_must_be_a_list_of_names(tmp_path: Path, channels: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[[principal]]\nname = "x"\nrole = "storefront"\nchannels = {channels}\n')
    with pytest.raises(AuthFileError) as err:
        Principals.load(path)
    assert "channels" in str(err.value)
