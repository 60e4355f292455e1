"""Sales channels and their rules (issue 16): a channel's hold never takes more than its
rules let it at that instant (buffer, max_share), checked in the hold script itself; a row's
plain available is unchanged by rules; what a channel holds of a row is counted while its
holds last, and given back by commit, release and expiry. Through a real server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import Keys

from .conftest import ON_BOTH
from .grpc_helpers import T0, Stubs, delta, level, line, seed

pytestmark = ON_BOTH


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def rules(stubs: Stubs, *given: pb.ChannelRule) -> int:
    got = await stubs.stock.SetChannelRules(pb.SetChannelRulesRequest(rules=list(given)))
    return got.version


async def offered(stubs: Stubs, loc: str, sku: str, channel: str = "") -> int:
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=[sku], location_ids=[loc], channel=channel)
    )
    return got.levels[0].available


async def reserve(
    stubs: Stubs, rid: str, lines: list[pb.ReservationLine], channel: str = ""
) -> pb.ReserveResponse:
    return await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id=rid, lines=lines, channel=channel)
    )


async def test_a_buffer_keeps_a_stores_last_units_from_the_web_only(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 5})
    await rules(
        stubs, pb.ChannelRule(channel="web", location_type=pb.LOCATION_TYPE_STORE, buffer=2)
    )
    assert await offered(stubs, "s1", "a", "web") == 3
    assert await offered(stubs, "s1", "a") == 5  # the plain number is unchanged
    short = await reserve(stubs, "w1", [line("s1", "a", 4)], "web")
    assert [(s.requested, s.available) for s in short.shortfalls] == [(4, 3)]
    assert (await reserve(stubs, "w2", [line("s1", "a", 3)], "web")).HasField("reservation")
    assert await offered(stubs, "s1", "a", "web") == 0
    # the walk-in's till (another channel, no rule) takes the last two
    assert (await reserve(stubs, "t1", [line("s1", "a", 2)], "store")).HasField("reservation")


async def test_a_share_caps_what_a_channel_holds_counting_its_own_holds(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await rules(stubs, pb.ChannelRule(channel="marketplace", max_share=0.3))
    assert await offered(stubs, "s1", "a", "marketplace") == 3
    await reserve(stubs, "m1", [line("s1", "a", 2)], "marketplace")
    assert await offered(stubs, "s1", "a", "marketplace") == 1
    assert await redis.hget(Keys.channel_holds("s1"), "a\tmarketplace") == b"2"
    short = await reserve(stubs, "m2", [line("s1", "a", 2)], "marketplace")
    assert [(s.requested, s.available) for s in short.shortfalls] == [(2, 1)]
    # a release gives the channel's share back; a commit takes the units out of both
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="m1"))
    assert await offered(stubs, "s1", "a", "marketplace") == 3
    assert not await redis.hexists(Keys.channel_holds("s1"), "a\tmarketplace")
    await reserve(stubs, "m3", [line("s1", "a", 3)], "marketplace")
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="m3"))
    assert not await redis.hexists(Keys.channel_holds("s1"), "a\tmarketplace")
    assert await offered(stubs, "s1", "a", "marketplace") == 2  # 30% of the 7 left


async def test_the_most_specific_rule_wins_and_a_removed_one_falls_back(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10, ("s2", "a"): 10})
    first = await rules(
        stubs,
        pb.ChannelRule(channel="web", buffer=1),
        pb.ChannelRule(channel="web", location_type=pb.LOCATION_TYPE_STORE, buffer=2),
        pb.ChannelRule(channel="web", location_id="s1", buffer=4),
    )
    assert (await offered(stubs, "s1", "a", "web"), await offered(stubs, "s2", "a", "web")) == (
        6,
        8,
    )
    second = await rules(stubs, pb.ChannelRule(channel="web", location_id="s1", remove=True))
    assert second > first
    assert await offered(stubs, "s1", "a", "web") == 8
    await rules(
        stubs, pb.ChannelRule(channel="web", location_type=pb.LOCATION_TYPE_STORE, remove=True)
    )
    assert await offered(stubs, "s1", "a", "web") == 9  # the default
    assert await offered(stubs, "s1", "a", "app") == 10  # no rule for this channel


async def test_a_hold_across_locations_keeps_each_locations_rule(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 3, ("s2", "a"): 3})
    await rules(stubs, pb.ChannelRule(channel="web", location_id="s2", buffer=3))
    short = await reserve(stubs, "x1", [line("s1", "a", 1), line("s2", "a", 1)], "web")
    assert [(s.location_id, s.available) for s in short.shortfalls] == [("s2", 0)]
    assert await offered(stubs, "s1", "a") == 3  # the part held at s1 was let go


async def test_an_expired_hold_gives_its_channels_share_back(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await rules(stubs, pb.ChannelRule(channel="app", max_share=0.5))
    await stubs.reservations.Reserve(
        pb.ReserveRequest(
            reservation_id="e1", lines=[line("s1", "a", 5)], channel="app", ttl_seconds=0.2
        )
    )
    assert await offered(stubs, "s1", "a", "app") == 0
    for _ in range(200):  # the sweeper expires it
        if await offered(stubs, "s1", "a", "app") == 5:
            break
        await asyncio.sleep(0.02)
    assert await offered(stubs, "s1", "a", "app") == 5
    assert not await redis.hexists(Keys.channel_holds("s1"), "a\tapp")


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (pb.ChannelRule(channel="", buffer=1), "rules[0].channel"),
        (pb.ChannelRule(channel="web", buffer=-1), "rules[0].buffer"),
        (pb.ChannelRule(channel="web", max_share=0), "rules[0].max_share"),
        (pb.ChannelRule(channel="web", max_share=4e-7), "rules[0].max_share"),  # 0 millionths
        (pb.ChannelRule(channel="web", max_share=1.5), "rules[0].max_share"),
        (pb.ChannelRule(channel="web", location_id="nowhere"), "rules[].location_id"),
        (pb.ChannelRule(channel="w b"), "rules[0].channel"),
    ],
)
async def test_a_bad_rule_is_refused_naming_its_field(
    stubs: Stubs, redis_url: str, rule: pb.ChannelRule, field: str
) -> None:
    await seed(stubs, {("s1", "a"): 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rules(stubs, rule)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()


async def test_a_flash_sale_from_two_channels_takes_exactly_what_each_may(
    stubs: Stubs, redis_url: str
) -> None:
    # 100 units: the web may hold at most 40% of them, the app has a buffer of 10
    await seed(stubs, {("s1", "a"): 100})
    await rules(
        stubs,
        pb.ChannelRule(channel="web", max_share=0.4),
        pb.ChannelRule(channel="app", buffer=10),
    )

    async def buyer(channel: str, i: int) -> int:
        got = await reserve(stubs, f"{channel}-{i}", [line("s1", "a", 1)], channel)
        return 1 if got.HasField("reservation") else 0

    web, app = await asyncio.gather(
        asyncio.gather(*(buyer("web", i) for i in range(80))),
        asyncio.gather(*(buyer("app", i) for i in range(120))),
    )
    # whatever the order the holds came in: the web never above its share, the app never
    # into its buffer; and each refusal was right when it was made, so the web stopped at
    # its share or at nothing left, and the app at its buffer
    taken_web, taken_app = sum(web), sum(app)
    assert taken_web <= 40 and taken_app <= 90, (taken_web, taken_app)
    assert 90 <= taken_web + taken_app <= 100, (taken_web, taken_app)
    assert taken_web == 40 or taken_web + taken_app == 100, (taken_web, taken_app)
    assert (await level(stubs, "s1", "a")).reserved == taken_web + taken_app


async def test_nearby_stores_for_a_channel_are_those_its_rules_let_it_hold_at(
    stubs: Stubs, redis_url: str
) -> None:
    # two stores at one place: s1 keeps its last 3 units from the web, s2 keeps none
    await seed(stubs, {("s1", "a"): 4, ("s2", "a"): 4})
    await rules(stubs, pb.ChannelRule(channel="web", location_id="s1", buffer=3))

    async def nearest(channel: str) -> list[tuple[str, int]]:
        got = await stubs.availability.FindNearby(
            pb.FindNearbyRequest(
                latitude=51.5, longitude=-0.12, radius_km=50, channel=channel,
                lines=[pb.BasketLine(sku="a", qty=2)], partial=True,
            )
        )  # fmt: skip
        return [(n.location.id, n.lines[0].available) for n in got.locations]

    assert await nearest("") == [("s1", 4), ("s2", 4)]
    assert await nearest("web") == [("s2", 4), ("s1", 1)]  # s1 fills only part of it


async def test_an_allocation_for_a_channel_plans_and_holds_under_its_rules(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    # the web may hold at most half of a row: 3 of s1's 6
    await seed(stubs, {("s1", "a"): 6})
    await rules(stubs, pb.ChannelRule(channel="web", max_share=0.5))

    async def allocate(rid: str, qty: int, channel: str) -> pb.AllocateResponse:
        return await stubs.sourcing.Allocate(
            pb.AllocateRequest(
                latitude=51.5, longitude=-0.12, lines=[pb.BasketLine(sku="a", qty=qty)],
                reserve=True, reservation_id=rid, channel=channel,
            )
        )  # fmt: skip

    assert [u.qty for u in (await allocate("o1", 4, "web")).unfilled] == [4]  # over its share
    got = await allocate("o2", 3, "web")
    assert [(s.location.id, s.lines[0].qty) for s in got.shipments] == [("s1", 3)]
    assert got.HasField("reservation")
    assert await redis.hget(Keys.channel_holds("s1"), "a\tweb") == b"3"
    assert [u.qty for u in (await allocate("o3", 1, "web")).unfilled] == [1]  # share used up
    plain = await allocate("o4", 3, "")  # no channel: every unit left
    assert [(s.location.id, s.lines[0].qty) for s in plain.shipments] == [("s1", 3)]


# -- ring-fenced pools ---------------------------------------------------------------------


async def pool(stubs: Stubs, *pools: pb.Pool) -> int:
    return (await stubs.stock.SetPool(pb.SetPoolRequest(pools=list(pools)))).changed


def launch(units: int, fallback: bool = False, channel: str = "app") -> pb.Pool:
    return pb.Pool(location_id="s1", sku="a", channel=channel, units=units, fallback=fallback)


async def test_a_pool_is_its_channels_alone_and_the_plain_number_is_unchanged(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    assert await pool(stubs, launch(4)) == 1
    assert await offered(stubs, "s1", "a", "app") == 4  # its pool, no fallback
    assert await offered(stubs, "s1", "a", "web") == 6  # every other channel: the rest
    assert await offered(stubs, "s1", "a") == 10  # no channel: no rule, no pool
    short = await reserve(stubs, "w1", [line("s1", "a", 7)], "web")
    assert [(s.requested, s.available) for s in short.shortfalls] == [(7, 6)]
    assert (await reserve(stubs, "p1", [line("s1", "a", 3)], "app")).HasField("reservation")
    assert (await offered(stubs, "s1", "a", "app"), await offered(stubs, "s1", "a", "web")) == (
        1,
        6,
    )


async def test_a_pool_with_fallback_draws_on_the_shared_units_once_its_own_are_gone(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await pool(stubs, launch(4, fallback=True))
    assert await offered(stubs, "s1", "a", "app") == 10
    assert (await reserve(stubs, "p1", [line("s1", "a", 6)], "app")).HasField("reservation")
    # its 4 of the pool and 2 shared: the web sees the 4 left
    assert (await offered(stubs, "s1", "a", "app"), await offered(stubs, "s1", "a", "web")) == (
        4,
        4,
    )


async def test_a_pool_shrunk_or_ended_leaves_its_holds_held(stubs: Stubs, redis_url: str) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await pool(stubs, launch(5))
    await reserve(stubs, "p1", [line("s1", "a", 3)], "app")
    assert await pool(stubs, launch(2)) == 1  # shrunk below what it holds
    assert (await offered(stubs, "s1", "a", "app"), await offered(stubs, "s1", "a", "web")) == (
        0,
        7,
    )
    assert await pool(stubs, launch(0)) == 1  # ended: its units go back to everyone
    assert await offered(stubs, "s1", "a", "web") == 7
    assert await pool(stubs, launch(0)) == 0  # nothing to end
    held = await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="p1"))
    assert held.state == pb.RESERVATION_STATE_HELD
    assert (await level(stubs, "s1", "a")).reserved == 3


async def test_pools_never_keep_more_than_is_there(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    # two pools of 5 on a row of 6: together they would keep more than there is
    await seed(stubs, {("s1", "a"): 6})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pool(stubs, launch(5), launch(5, channel="kiosk"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has 1 units 'kiosk' may keep" in (err.value.details() or "")
    assert not await redis.exists(Keys.pools("s1"))  # all or nothing
    await pool(stubs, launch(5), launch(1, channel="kiosk"))
    assert await offered(stubs, "s1", "a", "web") == 0
    # once a delta drops on_hand below the pools, they keep what is there, no more
    sold = delta("d1", "s1", "a", -2, T0 + 1)
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[sold]))
    app, kiosk = await offered(stubs, "s1", "a", "app"), await offered(stubs, "s1", "a", "kiosk")
    assert (app, kiosk) == (4, 1)
    assert (await reserve(stubs, "p1", [line("s1", "a", 4)], "app")).HasField("reservation")
    short = await reserve(stubs, "k1", [line("s1", "a", 1)], "kiosk")
    assert [(s.requested, s.available) for s in short.shortfalls] == [(1, 0)]
    assert await pool(stubs, launch(1, channel="kiosk")) == 0  # unchanged: no more than was
    assert await pool(stubs, launch(0, channel="kiosk")) == 1  # ending one always may


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (pb.Pool(location_id="s1", sku="a", channel="", units=1), "pools[0].channel"),
        (pb.Pool(location_id="s1", sku="a", channel="app", units=-1), "pools[0].units"),
        (pb.Pool(location_id="nowhere", sku="a", channel="app", units=1), "pools[].location_id"),
        (pb.Pool(location_id="s1", sku="", channel="app", units=1), "pools[0].sku"),
    ],
)
async def test_a_bad_pool_is_refused_naming_its_field(
    stubs: Stubs, redis_url: str, bad: pb.Pool, field: str
) -> None:
    await seed(stubs, {("s1", "a"): 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pool(stubs, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()


async def test_a_launch_from_two_channels_against_a_pool_with_fallback(
    stubs: Stubs, redis_url: str
) -> None:
    # 60 units, 20 ring-fenced for the app with fallback; the web may take only the rest
    await seed(stubs, {("s1", "a"): 60})
    await pool(stubs, launch(20, fallback=True))

    async def buyer(channel: str, i: int) -> int:
        got = await reserve(stubs, f"{channel}-{i}", [line("s1", "a", 1)], channel)
        return 1 if got.HasField("reservation") else 0

    web, app = await asyncio.gather(
        asyncio.gather(*(buyer("web", i) for i in range(70))),
        asyncio.gather(*(buyer("app", i) for i in range(70))),
    )
    taken_web, taken_app = sum(web), sum(app)
    # the app always gets its 20, whatever the order; the web never one of them; every
    # unit goes (the app falls back on what the web leaves, and there are buyers enough)
    assert taken_app >= 20 and taken_web <= 40, (taken_web, taken_app)
    assert taken_web + taken_app == 60, (taken_web, taken_app)
    assert (await level(stubs, "s1", "a")).reserved == 60


async def test_a_watch_for_a_channel_sees_what_that_channel_may_hold(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await rules(stubs, pb.ChannelRule(channel="web", buffer=2))
    await pool(stubs, launch(3))
    watch = stubs.availability.WatchAvailability(
        pb.WatchAvailabilityRequest(
            skus=["a"], location_ids=["s1"], send_current=True, channel="web"
        )
    )
    opening = await watch.read()
    assert (opening.current, opening.level.available, opening.level.on_hand) == (True, 5, 10)
    await reserve(stubs, "p1", [line("s1", "a", 2)], "app")  # from its pool: the web's 5 stay
    change = await watch.read()
    assert (change.level.reserved, change.level.available) == (2, 5)
    await reserve(stubs, "w1", [line("s1", "a", 4)], "web")
    change = await watch.read()
    assert (change.level.reserved, change.level.available) == (6, 1)
    watch.cancel()


async def test_a_share_of_a_row_beyond_two_to_the_53_units_is_exact(
    stubs: Stubs, redis_url: str
) -> None:
    # on_hand 10,000,000,001 (DELTAs add up past any one event's cap): 0.999999 of it is
    # 9,999,990,000 units and a bit; the hold script once let the channel take one more
    await seed(stubs, {("s1", "a"): 1})
    events = [delta(f"big-{i}", "s1", "a", 10**9, T0 + 1 + i) for i in range(10)]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
    await rules(stubs, pb.ChannelRule(channel="bulk", max_share=0.999999))
    share = 10_000_000_001 * 999_999 // 1_000_000
    assert await offered(stubs, "s1", "a", "bulk") == share
    for i in range(9):  # a line holds at most 10^9 units
        await reserve(stubs, f"b{i}", [line("s1", "a", 10**9)], "bulk")
    left = share - 9 * 10**9
    over = await reserve(stubs, "over", [line("s1", "a", left + 1)], "bulk")
    assert [(s.requested, s.available) for s in over.shortfalls] == [(left + 1, left)]
    assert (await reserve(stubs, "last", [line("s1", "a", left)], "bulk")).HasField("reservation")
