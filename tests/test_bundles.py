"""Bundles and kits (issue 17, point 6): SetBundles refuses bad bundles by field; a bundle's
availability is min over its components of floor(available / qty); a hold of a bundle holds
its components in the same atomic step (I10) and answers with the lines as sent; commit,
release and expiry act on the components held, whatever the bundle becomes later; a
component sold alone lowers the bundle at once, and no race oversells one. On one Redis and
on the cluster, through the use cases and over gRPC."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from engine.app import Omnistock
from engine.domain.bundles import Bundle
from engine.domain.clock import ManualClock
from engine.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from engine.domain.model import Line, ReservationState, Shortfall
from engine.domain.moves import Move
from engine.domain.rules import ChannelRule, CustomerLimit
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.storage import Storage
from engine.usecases.availability import Availability
from engine.usecases.bundles import set_bundles
from engine.usecases.channels import RuleChange
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, register
from .grpc_helpers import LON, Stubs, count, line, north, place, stock_up, store
from .test_concurrency import clients
from .test_ingest import reconcile
from .test_sweeper import count_event

pytestmark = ON_BOTH

KIT = Bundle("kit", (("a", 2), ("b", 1)))  # two of a and one of b


@pytest.fixture
async def shop(storage: Storage, reservations: Reservations, clock: ManualClock) -> Reservations:
    """s1 and s2 with 10 of a and 4 of b each, and the kit (2 a + 1 b)."""
    now = clock.now_ms()
    for loc in ("s1", "s2"):
        events = [count_event(loc, "a", 10, now), count_event(loc, "b", 4, now)]
        await storage.apply_events(loc, events, now)
    await register(reservations, "s1", "s2")
    await set_bundles(reservations.channels, [(KIT, False)])
    return reservations


async def row(storage: Storage, loc: str, sku: str) -> tuple[int, int]:
    got = (await storage.rows([(loc, sku)]))[0]
    return got.on_hand, got.reserved


async def kits(shop: Reservations, loc: str = "s1", channel: str = "") -> int:
    levels = await Availability(shop.storage, shop.locations, channels=shop.channels).levels(
        ["kit"], [loc], set(), True, channel
    )
    return levels[0][3]


async def test_a_bundle_is_as_available_as_its_scarcest_component(shop: Reservations) -> None:
    # a: 10 // 2 = 5 kits, b: 4 // 1 = 4 kits
    assert await kits(shop) == 4
    assert (await shop.reserve("plain", [Line("s1", "a", 5)])).ok  # a sold alone: 5 left
    assert await kits(shop) == 2
    levels = await Availability(shop.storage, shop.locations, channels=shop.channels).levels(
        ["a", "kit", "b"], ["s1"], set(), True
    )
    assert [(sku, lvl.available, a) for _, sku, lvl, a, _, _ in levels] == [
        ("a", 5, 5), ("kit", 2, 2), ("b", 4, 4),
    ]  # fmt: skip


async def test_a_bundle_hold_moves_exactly_its_components_at_once(shop: Reservations) -> None:
    got = await shop.reserve("r1", [Line("s1", "kit", 3), Line("s1", "a", 1)], ttl_seconds=60)
    assert got.reservation is not None
    assert got.reservation.lines == (Line("s1", "a", 1), Line("s1", "kit", 3))  # as sent
    assert await row(shop.storage, "s1", "a") == (10, 7)
    assert await row(shop.storage, "s1", "b") == (4, 3)
    assert await row(shop.storage, "s1", "kit") == (0, 0)  # a bundle has no row
    assert (await shop.get("r1")).lines == got.reservation.lines
    # the same id and lines: the same answer, nothing more held; other lines: refused
    again = await shop.reserve("r1", [Line("s1", "a", 1), Line("s1", "kit", 3)], ttl_seconds=60)
    assert again.reservation is not None and again.reservation.lines == got.reservation.lines
    assert await row(shop.storage, "s1", "a") == (10, 7)
    with pytest.raises(AlreadyExists):  # the same rows held, asked otherwise
        await shop.reserve("r1", [Line("s1", "a", 7), Line("s1", "b", 3)], ttl_seconds=60)
    committed = await shop.commit("r1")
    assert committed.lines == got.reservation.lines
    assert await row(shop.storage, "s1", "a") == (3, 0)
    assert await row(shop.storage, "s1", "b") == (1, 0)


async def test_a_short_component_is_told_as_the_bundle_line_and_holds_nothing(
    shop: Reservations,
) -> None:
    got = await shop.reserve("r1", [Line("s1", "kit", 5), Line("s1", "a", 1)])
    assert not got.ok
    # b: 4 makes 4 kits; a (10) is short for the two lines together: both are told
    assert got.shortfalls == (Shortfall("s1", "a", 1, 1), Shortfall("s1", "kit", 5, 4))
    assert await row(shop.storage, "s1", "a") == (10, 0)
    assert await row(shop.storage, "s1", "b") == (4, 0)


async def test_release_and_expiry_give_back_the_components_held_whatever_the_bundle_becomes(
    shop: Reservations, clock: ManualClock
) -> None:
    assert (await shop.reserve("r1", [Line("s1", "kit", 2)], ttl_seconds=60)).ok
    assert (await shop.reserve("r2", [Line("s1", "kit", 1), Line("s2", "kit", 1)], 60)).ok
    # the kit changes: holds made keep the components they took
    await set_bundles(shop.channels, [(Bundle("kit", (("b", 3),)), False)])
    assert await row(shop.storage, "s1", "a") == (10, 6)
    released = await shop.release("r1")
    assert released.lines == (Line("s1", "kit", 2),)
    assert await row(shop.storage, "s1", "a") == (10, 2)
    assert await row(shop.storage, "s1", "b") == (4, 1)
    clock.advance(61_000)
    await shop.release("r2")  # past its expiry: it lets go of what it held
    for loc in ("s1", "s2"):
        assert await row(shop.storage, loc, "a") == (10, 0)
        assert await row(shop.storage, loc, "b") == (4, 0)
    await set_bundles(shop.channels, [(Bundle("kit", ()), True)])
    assert "kit" not in await shop.channels.table()


async def test_a_bundle_with_a_channel_is_held_to_the_channels_rules(shop: Reservations) -> None:
    await shop.channels.set([RuleChange("web", "s1", rule=ChannelRule(buffer=2))])
    assert await kits(shop, channel="web") == 2  # b: 4 - 2 = 2 kits
    got = await shop.reserve("r1", [Line("s1", "kit", 3)], channel="web")
    assert got.shortfalls == (Shortfall("s1", "kit", 3, 2),)
    assert (await shop.reserve("r2", [Line("s1", "kit", 2)], channel="web")).ok


async def test_move_line_refuses_a_reservation_holding_bundles(shop: Reservations) -> None:
    assert (await shop.reserve("r1", [Line("s1", "kit", 1)])).ok
    with pytest.raises(InvalidArgument, match=r"reservation_id: .* holds bundles"):
        await shop.move_line("r1", "m1", Move("s1", "a", 0, "s2"))
    assert await row(shop.storage, "s1", "a") == (10, 2)


async def test_a_customer_limit_on_a_kit_counts_kits_as_asked(shop: Reservations) -> None:
    await shop.channels.set_limits({"kit": CustomerLimit(2, 3_600_000)})
    assert (await shop.reserve("r1", [Line("s1", "kit", 2)], customer="ann")).ok
    with pytest.raises(FailedPrecondition, match="at most 2 of kit"):
        await shop.reserve("r2", [Line("s2", "kit", 1)], customer="ann")
    await shop.release("r1")  # gives the kits back to the count
    assert (await shop.reserve("r3", [Line("s2", "kit", 2)], customer="ann")).ok
    assert await row(shop.storage, "s2", "b") == (4, 2)


@pytest.mark.parametrize(
    ("bundle", "field"),
    [
        (Bundle("kit2", ()), "bundles[0].components"),
        (Bundle("kit2", (("kit2", 1),)), "bundles[0].components[0].sku"),
        (Bundle("kit2", (("a", 1), ("a", 2))), "bundles[0].components[1].sku"),
        (Bundle("kit2", (("a", 0),)), "bundles[0].components[0].qty"),
        (Bundle("kit2", (("kit", 1),)), "bundles[0].components[0].sku"),  # a bundle
        (Bundle("a", (("b", 1),)), "bundles[0].sku"),  # a is a component of kit
        (Bundle("b x", (("a", 1),)), "bundles[0].sku"),
        (Bundle("kit2", tuple((f"c{i}", 1) for i in range(51))), "bundles[0].components"),
    ],
)
async def test_a_bad_bundle_is_refused_by_field_and_nothing_is_set(
    shop: Reservations, bundle: Bundle, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await set_bundles(shop.channels, [(Bundle("ok", (("b", 1),)), False), (bundle, False)])
    assert refused.value.field == field.replace("[0]", "[1]", 1)
    assert set(await shop.storage.bundles()) == {"kit"}


async def test_a_sku_with_stock_of_its_own_cannot_become_a_bundle(
    shop: Reservations, storage: Storage, clock: ManualClock
) -> None:
    await set_bundles(shop.channels, [(KIT, True)])  # a is no longer a component
    with pytest.raises(InvalidArgument, match=r"bundles\[1\].sku: a has stock of its own at s"):
        await set_bundles(
            shop.channels, [(Bundle("kit", (("b", 1),)), False), (Bundle("a", (("c", 1),)), False)]
        )
    assert await storage.bundles() == {}
    # a sku whose rows are at zero and hold nothing may become one
    now = clock.now_ms()
    await storage.apply_events("s1", [count_event("s1", "z", 0, now)], now)
    await set_bundles(shop.channels, [(Bundle("z", (("c", 1),)), False)])
    assert set(await storage.bundles()) == {"z"}


async def test_a_bundle_and_its_components_sold_alone_racing_never_oversell(
    shop: Reservations,
) -> None:
    """40 holds at once at s1, kits and single a's and b's: no row is held past its on_hand,
    and each row's reserved is what the holds made hold of it."""
    asks = [
        [Line("s1", "kit", 1)] if i % 3 == 0 else [Line("s1", "a" if i % 3 == 1 else "b", 1)]
        for i in range(40)
    ]
    got = await asyncio.gather(*(shop.reserve(f"r{i}", ask) for i, ask in enumerate(asks)))
    units = {"a": 0, "b": 0}
    for ask, result in zip(asks, got, strict=True):
        if result.ok:
            for ln in ask:
                for sku, qty in KIT.components if ln.sku == "kit" else ((ln.sku, 1),):
                    units[sku] += qty * ln.qty
    assert await row(shop.storage, "s1", "a") == (10, units["a"])
    assert await row(shop.storage, "s1", "b") == (4, units["b"])
    assert units["a"] <= 10 and units["b"] <= 4
    assert sum(r.ok for r in got) > 0


async def test_an_expired_bundle_hold_is_reported_as_sent(
    shop: Reservations, clock: ManualClock
) -> None:
    assert (await shop.reserve("r1", [Line("s1", "kit", 1)], ttl_seconds=60)).ok
    clock.advance(61_000)
    got = await shop.get("r1")
    assert got.lines == (Line("s1", "kit", 1),)
    assert got.state in (ReservationState.HELD, ReservationState.EXPIRED)


# -- over gRPC ---------------------------------------------------------------------------


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


def now_ms() -> int:
    return int(time.time() * 1000)


def kit_msg(sku: str, *components: tuple[str, int], remove: bool = False) -> pb.Bundle:
    parts = [pb.BundleComponent(sku=s, qty=q) for s, q in components]
    return pb.Bundle(sku=sku, components=parts, remove=remove)


async def set_kits(stubs: Stubs, *bundles: pb.Bundle) -> int:
    got = await stubs.stock.SetBundles(pb.SetBundlesRequest(bundles=list(bundles)))
    return got.version


async def refused(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call  # type: ignore[misc]
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return (exc.value.details() or "").split(":")[0]


async def test_bundles_over_grpc_read_hold_find_and_allocate(stubs: Stubs) -> None:
    stores = [store("n1", 1.0), store("n2", 2.0)]
    await place(stubs, stores, {("n1", "a"): 3, ("n1", "b"): 9, ("n2", "a"): 8, ("n2", "b"): 9})
    version = await set_kits(stubs, kit_msg("kit", ("a", 2), ("b", 1)))
    assert await set_kits(stubs, kit_msg("kit", ("a", 2), ("b", 1))) > version  # a retry: same
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["kit"], location_ids=["n1", "n2"])
    )
    assert [(lv.location_id, lv.available) for lv in got.levels] == [("n1", 1), ("n2", 4)]
    near = await stubs.availability.FindNearby(
        pb.FindNearbyRequest(
            latitude=north(0), longitude=LON, radius_km=50,
            lines=[pb.BasketLine(sku="kit", qty=2)], limit=5,
        )
    )  # fmt: skip
    assert [h.location.id for h in near.locations] == ["n2"]
    plan = await stubs.sourcing.Allocate(
        pb.AllocateRequest(
            lines=[pb.BasketLine(sku="kit", qty=3)], latitude=north(0), longitude=LON,
            reserve=True, reservation_id="o1",
        )
    )  # fmt: skip
    assert [s.location.id for s in plan.shipments] == ["n2"]
    assert [(ln.sku, ln.qty) for ln in plan.reservation.lines] == [("kit", 3)]
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["a", "b", "kit"], location_ids=["n2"])
    )
    assert [(lv.sku, lv.reserved, lv.available) for lv in got.levels] == [
        ("a", 6, 2), ("b", 3, 6), ("kit", 0, 1),
    ]  # fmt: skip


async def test_calls_that_do_not_take_a_bundle_refuse_it_by_field(stubs: Stubs) -> None:
    await stock_up(stubs, {("L2", "a"): 5, ("L1", "a"): 0})
    await set_kits(stubs, kit_msg("kit", ("a", 1)))
    watch = stubs.availability.WatchAvailability(
        pb.WatchAvailabilityRequest(skus=["a", "kit"], location_ids=["L2"])
    )
    assert await refused(watch.read()) == "skus[1]"
    await stubs.stock.UpsertNetworks(
        pb.UpsertNetworksRequest(networks=[pb.Network(name="net", location_ids=["L2"])])
    )
    net = stubs.availability.GetNetworkAvailability(
        pb.GetNetworkAvailabilityRequest(network="net", skus=["kit"])
    )
    assert await refused(net) == "skus[0]"
    event = count("k1", "L2", "kit", 3)  # a count of a bundle: it has no stock of its own
    assert await refused(stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[event]))) == (
        "events[0].sku"
    )
    basket = [pb.BasketLine(sku="kit", qty=1), pb.BasketLine(sku="a", qty=1)]  # a twice
    near = pb.FindNearbyRequest(latitude=51.5, longitude=-0.12, radius_km=10, lines=basket)
    assert await refused(stubs.availability.FindNearby(near)) == "lines[1].sku"
    order = pb.AllocateRequest(lines=basket, latitude=51.5, longitude=-0.12)
    assert await refused(stubs.sourcing.Allocate(order)) == "lines[1].sku"
    header = pb.CountHeader(location_id="L2", count_id="c1", counted_at=now_ms() - 1000)
    assert await refused(reconcile(stubs, header, {"a": 4, "kit": 2})) == "lines[].sku"
    bad = kit_msg("kit2", ("kit", 1))
    assert await refused(set_kits(stubs, bad)) == "bundles[0].components[0].sku"
    assert await refused(set_kits(stubs)) == "bundles"
    reserve = pb.ReserveRequest(reservation_id="r1", lines=[line("L2", "kit", 6)])
    got = await stubs.reservations.Reserve(reserve)
    assert [(s.sku, s.requested, s.available) for s in got.shortfalls] == [("kit", 6, 5)]
    reserve = pb.ReserveRequest(reservation_id="r2", lines=[line("L2", "kit", 2)])
    got = await stubs.reservations.Reserve(reserve)
    assert [(ln.sku, ln.qty) for ln in got.reservation.lines] == [("kit", 2)]
    move = pb.MoveLineRequest(
        reservation_id="r2", move_id="m1", location_id="L2", sku="a", to_location_id="L1"
    )
    assert await refused(stubs.reservations.MoveLine(move)) == "reservation_id"


async def test_kits_and_their_components_sold_alone_over_grpc_never_oversell(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    """60 carts at once over gRPC, on four connections: kits (2 a + 1 b), single a's and b's,
    half of those held then committed. No row is held or sold past its stock, and each
    row's reserved is what the holds still held hold of it."""
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 20, ("s1", "b"): 10})
    await set_kits(stubs, kit_msg("kit", ("a", 2), ("b", 1)))
    held: dict[str, tuple[str, int]] = {}

    async def cart(i: int, rpc: pb_grpc.ReservationServiceStub) -> None:
        sku, qty = (("kit", 1 + i % 2), ("a", 1 + i % 3), ("b", 1))[i % 3]
        request = pb.ReserveRequest(reservation_id=f"c{i}", lines=[line("s1", sku, qty)])
        got = await rpc.Reserve(request)
        if got.HasField("reservation"):
            held[f"c{i}"] = (sku, qty)
            if i % 2:
                await rpc.Commit(pb.CommitRequest(reservation_id=f"c{i}"))

    async with clients(server, 4) as four:
        await asyncio.gather(*(cart(i, four[i % 4].reservations) for i in range(60)))
    units = {"a": [0, 0], "b": [0, 0]}  # [held, sold]
    for rid, (sku, qty) in held.items():
        for part, n in (("a", 2), ("b", 1)) if sku == "kit" else ((sku, 1),):
            units[part][int(rid[1:]) % 2] += qty * n
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["a", "b"], location_ids=["s1"])
    )
    levels = {lv.sku: (lv.on_hand, lv.reserved) for lv in got.levels}
    assert levels == {
        "a": (20 - units["a"][1], units["a"][0]),
        "b": (10 - units["b"][1], units["b"][0]),
    }
    assert all(reserved <= on_hand for on_hand, reserved in levels.values())
    assert any(sku == "kit" for sku, _ in held.values())


async def test_bundles_cost_no_round_trip_of_their_own(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    """A hold or a read of a kit goes to the store as often as one of a plain sku, and a
    plain sku's as often with bundles set as without, as often as before bundles were
    built: the table is in-process."""
    now = clock.now_ms()
    await storage.apply_events("s1", [count_event("s1", s, 50, now) for s in "ab"], now)
    await register(reservations, "s1")
    await reservations.channels.fresh()  # as the server does at its start
    exchanges = 0
    real = storage.guard

    async def counted(make: Any) -> Any:
        nonlocal exchanges
        exchanges += 1
        return await real(make)

    storage.guard = counted  # type: ignore[method-assign]
    reader = Availability(storage, reservations.locations, channels=reservations.channels)

    async def cost(sku: str, rid: str) -> tuple[int, int]:
        nonlocal exchanges
        exchanges = 0
        assert (await reservations.reserve(rid, [Line("s1", sku, 1)])).ok
        held, exchanges = exchanges, 0
        await reader.levels([sku], ["s1"], set(), True)
        return held, exchanges

    before = await cost("a", "r0")
    # one script call each (on a cluster, the hold and the directory entry, sent at once)
    assert before == ((2, 1) if storage.cluster else (1, 1))
    storage.guard = real  # type: ignore[method-assign]
    await set_bundles(reservations.channels, [(KIT, False)])
    storage.guard = counted  # type: ignore[method-assign]
    assert await cost("a", "r1") == before
    assert await cost("kit", "r2") == before
