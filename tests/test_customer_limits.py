"""Per-customer limits (issue 16): at most max_units of a limited sku per customer, held and
bought within the window, across every location, however many Reserves race; a hold not
made, released or expired gives its units back; a commit keeps them for the window. On one
Redis and on the cluster, through the use case (a manual clock moves time) and over gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.domain.clock import ManualClock
from engine.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from engine.domain.model import Line
from engine.domain.moves import Move
from engine.domain.rules import CustomerLimit
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import Keys
from engine.store.storage import Storage
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, register
from .grpc_helpers import Stubs, line, stock_up
from .test_sweeper import count_event

pytestmark = ON_BOTH

STORES = ("s1", "s2", "s3")
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
async def shop(storage: Storage, reservations: Reservations, clock: ManualClock) -> Reservations:
    """Three stores with 100 of the launch sku `k` and of `plain` each; `k` limited to 2 a
    customer over a day."""
    now = clock.now_ms()
    for loc in STORES:
        events = [count_event(loc, sku, 100, now) for sku in ("k", "plain")]
        await storage.apply_events(loc, events, now)
    await register(reservations, *STORES)
    await reservations.channels.set_limits({"k": CustomerLimit(2, DAY_MS)})
    return reservations


async def held(shop: Reservations, rid: str, lines: list[Line], customer: str) -> bool:
    return (await shop.reserve(rid, lines, ttl_seconds=60, customer=customer)).ok


async def test_a_customer_holds_no_more_than_the_limit_across_locations(
    shop: Reservations,
) -> None:
    assert await held(shop, "r1", [Line("s1", "k", 1)], "ann")
    assert await held(shop, "r2", [Line("s2", "k", 1)], "ann")
    with pytest.raises(FailedPrecondition, match=r"customer_id: customer ann .* at most 2 of k"):
        await held(shop, "r3", [Line("s3", "k", 1)], "ann")
    assert (
        shop.metrics.registry.get_sample_value("omnistock_holds_total", {"outcome": "limited"}) == 1
    )
    # nothing of the refused hold is held; other customers, other skus and no customer
    # are not limited by ann's
    assert (await shop.storage.rows([("s3", "k")]))[0].reserved == 0
    assert await held(shop, "r4", [Line("s3", "k", 2)], "bob")
    assert await held(shop, "r5", [Line("s3", "plain", 5)], "ann")
    assert await held(shop, "r6", [Line("s3", "k", 5)], "")


async def test_one_reservation_over_the_limit_is_refused_whole(shop: Reservations) -> None:
    lines = [Line("s1", "k", 2), Line("s2", "k", 1), Line("s1", "plain", 1)]  # a saga
    with pytest.raises(FailedPrecondition, match="they have 0, and this reservation holds 3"):
        await held(shop, "r1", lines, "ann")
    assert await held(shop, "r2", [Line("s1", "k", 1), Line("s2", "k", 1)], "ann")


async def test_a_release_a_hold_not_made_and_an_expiry_give_the_units_back(
    shop: Reservations, storage: Storage, clock: ManualClock
) -> None:
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")
    await shop.release("r1")
    # a hold that falls short counts nothing
    short = await shop.reserve("r2", [Line("s1", "k", 2), Line("s1", "plain", 500)], customer="ann")
    assert not short.ok
    assert await held(shop, "r3", [Line("s2", "k", 2)], "ann")
    # its expiry (60 s) ends its count, swept or not
    clock.advance(60_001)
    assert await held(shop, "r4", [Line("s3", "k", 2)], "ann")


async def test_bought_units_count_for_the_window_from_the_commit(
    shop: Reservations, clock: ManualClock
) -> None:
    await shop.channels.set_limits({"k": CustomerLimit(2, 3_600_000)})
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")
    clock.advance(30_000)
    await shop.commit("r1")
    clock.advance(3_600_000 - 1)  # past the hold's expiry, within the hour from the commit
    with pytest.raises(FailedPrecondition):
        await held(shop, "r2", [Line("s2", "k", 1)], "ann")
    clock.advance(1)
    assert await held(shop, "r3", [Line("s2", "k", 2)], "ann")


async def test_a_commit_of_a_saga_and_an_extend_move_the_counts_end(
    shop: Reservations, clock: ManualClock
) -> None:
    assert await held(shop, "r1", [Line("s1", "k", 1), Line("s2", "k", 1)], "ann")
    await shop.extend("r1", 600)
    clock.advance(60_001)  # past the first expiry: the extended hold still counts
    with pytest.raises(FailedPrecondition):
        await held(shop, "r2", [Line("s3", "k", 1)], "ann")
    await shop.commit("r1")
    clock.advance(600_000)
    with pytest.raises(FailedPrecondition):
        await held(shop, "r3", [Line("s3", "k", 1)], "ann")


async def test_a_commit_that_finds_the_hold_expired_counts_nothing_bought(
    shop: Reservations, clock: ManualClock
) -> None:
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")
    clock.advance(60_001)
    with pytest.raises(FailedPrecondition):
        await shop.commit("r1")
    assert await held(shop, "r2", [Line("s2", "k", 2)], "ann")


async def test_a_retry_counts_once_and_another_customer_is_another_reservation(
    shop: Reservations,
) -> None:
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")  # a retry: the same answer
    with pytest.raises(AlreadyExists):
        await held(shop, "r1", [Line("s1", "k", 2)], "bob")
    assert await held(
        shop, "r2", [Line("s2", "k", 2)], "bob"
    )  # bob's refused retry counted nothing


async def test_racing_reserves_of_one_customer_hold_exactly_the_limit(shop: Reservations) -> None:
    await shop.channels.set_limits({"k": CustomerLimit(5, DAY_MS)})

    async def attempt(i: int) -> int:
        try:
            ok = await held(shop, f"r{i}", [Line(STORES[i % 3], "k", 1)], "ann")
        except FailedPrecondition:
            return 0
        return 1 if ok else 0

    got = await asyncio.gather(*(attempt(i) for i in range(40)))
    assert sum(got) == 5
    rows = [r.reserved for r in await shop.storage.rows([(loc, "k") for loc in STORES])]
    assert sum(rows) == 5


async def test_limits_are_checked_and_removed(shop: Reservations) -> None:
    with pytest.raises(InvalidArgument, match="customer_id"):
        await shop.reserve("r1", [Line("s1", "k", 1)], customer="bad id")
    await shop.channels.set_limits({"k": None})
    assert await held(shop, "r2", [Line("s1", "k", 50)], "ann")


# -- over gRPC ------------------------------------------------------------------------------


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def set_limits(stubs: Stubs, *limits: pb.CustomerLimit) -> None:
    await stubs.stock.SetCustomerLimits(pb.SetCustomerLimitsRequest(limits=list(limits)))


async def code_and_details(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_reserve_and_allocate_name_the_customer(stubs: Stubs) -> None:
    await stock_up(stubs, {("s1", "k"): 10, ("s2", "k"): 10})
    await set_limits(stubs, pb.CustomerLimit(sku="k", max_units=2, window_seconds=86400))

    def reserve(rid: str, loc: str, qty: int, customer: str) -> object:
        request = pb.ReserveRequest(
            reservation_id=rid, lines=[line(loc, "k", qty)], customer_id=customer
        )
        return stubs.reservations.Reserve(request)

    assert (await code_and_details(reserve("r1", "s1", 2, "ann")))[0] == grpc.StatusCode.OK
    code, details = await code_and_details(reserve("r2", "s2", 1, "ann"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("customer_id: ")
    order = pb.AllocateRequest(
        lines=[pb.BasketLine(sku="k", qty=1)], latitude=51.5, longitude=-0.12,
        reserve=True, reservation_id="o1", customer_id="ann",
    )  # fmt: skip
    code, _ = await code_and_details(stubs.sourcing.Allocate(order))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    order.customer_id = "bob"
    assert (await stubs.sourcing.Allocate(order)).reservation.state == pb.RESERVATION_STATE_HELD


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        (pb.CustomerLimit(max_units=2, window_seconds=60), "limits[0].sku"),
        (pb.CustomerLimit(sku="k", max_units=0, window_seconds=60), "limits[0].max_units"),
        (pb.CustomerLimit(sku="k", max_units=-1, window_seconds=60), "limits[0].max_units"),
        (pb.CustomerLimit(sku="k", max_units=2), "limits[0].window_seconds"),
        (pb.CustomerLimit(sku="k", max_units=2, window_seconds=0.5), "limits[0].window_seconds"),
        (pb.CustomerLimit(sku="k", max_units=2, window_seconds=1e12), "limits[0].window_seconds"),
        (
            pb.CustomerLimit(sku="k", max_units=2, window_seconds=float("nan")),
            "limits[0].window_seconds",
        ),
    ],
)
async def test_a_bad_limit_is_refused_naming_its_field(
    stubs: Stubs, limit: pb.CustomerLimit, field: str
) -> None:
    code, details = await code_and_details(set_limits(stubs, limit))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: "), details


async def test_a_sku_given_twice_or_no_limit_is_refused(stubs: Stubs) -> None:
    twice = [pb.CustomerLimit(sku="k", max_units=1, window_seconds=60)] * 2
    code, details = await code_and_details(set_limits(stubs, *twice))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "limits[1].sku")
    code, details = await code_and_details(set_limits(stubs))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "limits")


async def test_a_launch_under_a_pool_a_buffer_and_a_limit_at_once(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster
) -> None:
    """30 customers, each trying 3 times for one unit through the web or the app, all at
    once, against 40 units: a pool of 10 for the app (with fallback), the web kept off the
    store's last 2, and 2 a customer. Every rule holds together, and each customer's ledger
    counts exactly what they hold."""
    await stock_up(stubs, {("s1", "k"): 40})
    await set_limits(stubs, pb.CustomerLimit(sku="k", max_units=2, window_seconds=86400))
    rule = pb.ChannelRule(channel="web", location_type=pb.LOCATION_TYPE_STORE, buffer=2)
    await stubs.stock.SetChannelRules(pb.SetChannelRulesRequest(rules=[rule]))
    pool = pb.Pool(location_id="s1", sku="k", channel="app", units=10, fallback=True)
    await stubs.stock.SetPool(pb.SetPoolRequest(pools=[pool]))
    held: dict[tuple[str, str], int] = {}

    async def attempt(customer: str, i: int) -> grpc.StatusCode:
        channel = ("web", "app")[(i + int(customer[1:])) % 2]
        request = pb.ReserveRequest(
            reservation_id=f"{customer}-{i}", lines=[line("s1", "k", 1)],
            channel=channel, customer_id=customer,
        )  # fmt: skip
        try:
            answer = await stubs.reservations.Reserve(request)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        if answer.HasField("reservation"):
            held[(customer, channel)] = held.get((customer, channel), 0) + 1
        return grpc.StatusCode.OK

    customers = [f"c{n}" for n in range(30)]
    codes = await asyncio.gather(*(attempt(c, i) for c in customers for i in range(3)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    by_customer = {c: sum(n for (who, _), n in held.items() if who == c) for c in customers}
    assert max(by_customer.values()) <= 2
    web = sum(n for (_, ch), n in held.items() if ch == "web")
    assert web <= 40 - 10 - 2
    assert sum(by_customer.values()) <= 40
    row = (await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["k"], location_ids=["s1"])
    )).levels[0]  # fmt: skip
    assert row.reserved == sum(by_customer.values())
    for customer in customers:  # the ledger counts exactly what the customer holds
        ledger = await redis.hgetall(Keys.bought(customer, "k"))
        counted = sum(int(v.split(b",")[0]) for v in ledger.values())
        assert counted == by_customer[customer], customer


async def test_a_moved_line_keeps_its_customers_count(
    shop: Reservations, clock: ManualClock
) -> None:
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")
    moved = await shop.move_line("r1", "m1", Move("s1", "k", 0, "s2"))
    assert moved.reservation is not None and moved.reservation.lines == (Line("s2", "k", 2),)
    with pytest.raises(FailedPrecondition):  # still 2 held, now at s2
        await held(shop, "r2", [Line("s3", "k", 1)], "ann")
    await shop.commit("r1")
    clock.advance(DAY_MS - 1)
    with pytest.raises(FailedPrecondition):  # bought at s2, within the day
        await held(shop, "r3", [Line("s3", "k", 1)], "ann")
    # a retried Reserve of the first lines holds nothing anew
    assert await held(shop, "r1", [Line("s1", "k", 2)], "ann")
    assert (await shop.storage.rows([("s1", "k")]))[0].reserved == 0
