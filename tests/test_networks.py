"""Location networks (issue 16): a named set of locations, by list and by selectors (type,
country, region, ship, pickup), resolved again as the locations and the network change;
and what a sales channel may hold across one (GetNetworkAvailability): for each sku, the sum
over the members of what the channel may hold at each, as its hold would find it, and how
many members have some. Through real servers, on one Redis and on a cluster, with the
network view (figures kept per process, engine/store/netview.py) and without it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.app import Omnistock
from engine.domain.model import EventKind, StockEvent
from engine.domain.rules import NO_RULE, ChannelRule
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.networks import ROWS_PER_CALL, MemberRead
from engine.store.storage import Storage

from .conftest import ON_BOTH, all_keys, served
from .grpc_helpers import T0, Stubs, count, delta, line

pytestmark = ON_BOTH
STORE, DC, DARK = pb.LOCATION_TYPE_STORE, pb.LOCATION_TYPE_DC, pb.LOCATION_TYPE_DARK_STORE


def place(loc_id: str, kind: int = STORE, country: str = "GB", **fields: object) -> pb.Location:
    values: dict[str, object] = {
        "id": loc_id,
        "name": loc_id,
        "type": kind,
        "latitude": 51.5,
        "longitude": -0.12,
        "pickup_enabled": True,
        "ship_enabled": True,
        "active": True,
        "country": country,
    }
    values.update(fields)
    return pb.Location(**values)  # type: ignore[arg-type]


# A small estate: London and Manchester stores (one that does not ship, one that offers no
# pickup, one closed), a GB and a FR warehouse, a Paris store and a London dark store.
ESTATE = [
    place("lon-1", region="london"),
    place("lon-2", region="london", ship_enabled=False),
    place("man-1", region="manchester", pickup_enabled=False),
    place("man-2", region="manchester", active=False),
    place("dc-gb", DC, pickup_enabled=False),
    place("dc-fr", DC, "FR", pickup_enabled=False),
    place("par-1", country="FR", region="paris"),
    place("dark-lon", DARK, region="london", pickup_enabled=False),
]


@pytest.fixture
async def running(
    redis: aioredis.Redis | RedisCluster, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Omnistock, Stubs]]:
    """A server (with the network view, or, param 0, without) on a flushed store, and the
    estate."""
    rows = getattr(request, "param", 2_000_000)
    async with served(redis_url, network_view_rows=rows) as (app, stubs):
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=ESTATE))
        yield app, stubs


@pytest.fixture
def stubs(running: tuple[Omnistock, Stubs]) -> Stubs:
    return running[1]


BOTH_WAYS = pytest.mark.parametrize(
    "running", [2_000_000, 0], ids=["view", "no-view"], indirect=True
)


def network(name: str, *location_ids: str, **selector: object) -> pb.Network:
    selectors = [pb.LocationSelector(**selector)] if selector else []  # type: ignore[arg-type]
    return pb.Network(name=name, location_ids=location_ids, selectors=selectors)


async def upsert(stubs: Stubs, *networks: pb.Network) -> pb.UpsertNetworksResponse:
    return await stubs.stock.UpsertNetworks(pb.UpsertNetworksRequest(networks=networks))


async def members(stubs: Stubs, name: str) -> list[str]:
    got = await stubs.availability.GetNetworkAvailability(
        pb.GetNetworkAvailabilityRequest(network=name, skus=["a"], include_members=True)
    )
    assert got.members == len(got.member_ids)
    return list(got.member_ids)


async def listing(
    stubs: Stubs, name: str, skus: list[str], channel: str = ""
) -> list[tuple[str, int, int]]:
    got = await stubs.availability.GetNetworkAvailability(
        pb.GetNetworkAvailabilityRequest(network=name, skus=skus, channel=channel)
    )
    return [(lv.sku, lv.available, lv.locations) for lv in got.levels]


async def summed(
    stubs: Stubs, locations: list[str], skus: list[str], channel: str = ""
) -> list[tuple[str, int, int]]:
    """What GetAvailability says, summed over the locations: the figure a listing must be."""
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=skus, location_ids=locations, channel=channel)
    )
    by_sku: dict[str, list[int]] = {sku: [] for sku in skus}
    for lv in got.levels:
        by_sku[lv.sku].append(lv.available)
    return [(sku, sum(a), sum(1 for x in a if x > 0)) for sku, a in by_sku.items()]


def rows_read(app: Omnistock) -> float:
    """Rows GetNetworkAvailability read from Redis so far (omnistock_network_rows_total)."""
    got = app.metrics.registry.get_sample_value("omnistock_network_rows_total", {"result": "read"})
    return got or 0.0


async def counted(stubs: Stubs, rows: dict[tuple[str, str], int]) -> None:
    events = [count(f"seed:{loc}:{sku}", loc, sku, qty, T0) for (loc, sku), qty in rows.items()]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))


# -- who is a member ---------------------------------------------------------------------


async def test_members_by_list_type_country_region_and_capability(stubs: Stubs) -> None:
    got = await upsert(
        stubs,
        network("listed", "lon-1", "par-1", "man-2"),
        network("dcs", types=[DC]),
        network("gb", countries=["GB"]),
        network("london", regions=["london"]),
        network("ship", ship_enabled=True, countries=["GB"]),
        network("pickup", pickup_enabled=True),
        # the example: every GB warehouse, and the GB stores that ship
        pb.Network(
            name="uk-ship",
            selectors=[
                pb.LocationSelector(types=[DC], countries=["GB"]),
                pb.LocationSelector(types=[STORE], countries=["GB"], ship_enabled=True),
            ],
        ),
        network("mixed", "par-1", types=[STORE], regions=["manchester"]),
    )
    assert [(n.name, n.members) for n in got.networks] == [
        ("listed", 2), ("dcs", 2), ("gb", 5), ("london", 3), ("ship", 4), ("pickup", 4),
        ("uk-ship", 3), ("mixed", 2),
    ]  # fmt: skip
    assert await members(stubs, "listed") == ["lon-1", "par-1"]  # man-2 is closed
    assert await members(stubs, "dcs") == ["dc-fr", "dc-gb"]
    assert await members(stubs, "gb") == ["dark-lon", "dc-gb", "lon-1", "lon-2", "man-1"]
    assert await members(stubs, "london") == ["dark-lon", "lon-1", "lon-2"]
    assert await members(stubs, "ship") == ["dark-lon", "dc-gb", "lon-1", "man-1"]
    # (and L1, the server's own store: a location of no country is matched by the rest)
    assert await members(stubs, "pickup") == ["L1", "lon-1", "lon-2", "par-1"]
    assert await members(stubs, "uk-ship") == ["dc-gb", "lon-1", "man-1"]
    assert await members(stubs, "mixed") == ["man-1", "par-1"]


async def test_a_change_of_locations_or_of_the_network_moves_its_members(stubs: Stubs) -> None:
    await upsert(stubs, network("gb-ship", countries=["GB"], ship_enabled=True))
    assert await members(stubs, "gb-ship") == ["dark-lon", "dc-gb", "lon-1", "man-1"]
    # a store starts shipping, one closes, one reopens, a new one opens
    await stubs.stock.UpsertLocations(
        pb.UpsertLocationsRequest(
            locations=[
                place("lon-2", region="london"),
                place("lon-1", region="london", active=False),
                place("man-2", region="manchester"),
                place("edi-1", region="edinburgh"),
            ]
        )
    )
    assert await members(stubs, "gb-ship") == [
        "dark-lon", "dc-gb", "edi-1", "lon-2", "man-1", "man-2",
    ]  # fmt: skip
    # the network is set again: it replaces the old one
    again = await upsert(stubs, network("gb-ship", "par-1", types=[DC]))
    assert again.networks[0].members == 3
    assert await members(stubs, "gb-ship") == ["dc-fr", "dc-gb", "par-1"]
    # and removed
    gone = await upsert(stubs, pb.Network(name="gb-ship", remove=True))
    assert gone.networks[0].members == 0 and gone.version > again.version
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await members(stubs, "gb-ship")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "network: no network 'gb-ship'"


@BOTH_WAYS
async def test_a_network_of_no_location_now_answers_none_available(
    running: tuple[Omnistock, Stubs],
) -> None:
    # given a network of the Japanese stores, which are none
    _, stubs = running
    await counted(stubs, {("lon-1", "a"): 5})
    got = await upsert(stubs, network("jp", countries=["JP"]))
    assert got.networks[0].members == 0
    # then a listing across it has nothing, at no location
    assert await listing(stubs, "jp", ["a", "b"], "web") == [("a", 0, 0), ("b", 0, 0)]
    assert await members(stubs, "jp") == []


async def test_a_network_set_through_another_process_is_known_there_at_once(
    stubs: Stubs, redis_url: str
) -> None:
    # given a first network, known to this process
    await upsert(stubs, network("gb", countries=["GB"]))
    assert await members(stubs, "gb")
    async with served(redis_url) as (_, other):
        # when another process sets a second one
        await upsert(other, network("fr", countries=["FR"]))
        # then this process answers for it straight away
        assert await members(stubs, "fr") == ["dc-fr", "par-1"]


# -- what is available across one -------------------------------------------------------------


@BOTH_WAYS
async def test_a_figure_is_the_sum_over_the_members_of_what_the_channel_may_hold(
    stubs: Stubs,
) -> None:
    # given stock across GB, a web buffer at stores, a marketplace share, an app pool, holds
    await counted(
        stubs,
        {("lon-1", "a"): 5, ("lon-2", "a"): 2, ("dc-gb", "a"): 40, ("man-1", "a"): 0,
         ("lon-1", "b"): 1, ("par-1", "a"): 9},
    )  # fmt: skip
    await stubs.stock.SetChannelRules(
        pb.SetChannelRulesRequest(
            rules=[
                pb.ChannelRule(channel="web", location_type=STORE, buffer=2),
                pb.ChannelRule(channel="marketplace", max_share=0.3),
            ]
        )
    )
    await stubs.stock.SetPool(
        pb.SetPoolRequest(
            pools=[pb.Pool(location_id="dc-gb", sku="a", channel="app", units=10, fallback=True)]
        )
    )
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="m1", lines=[line("dc-gb", "a", 4)], channel="marketplace")
    )
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("lon-1", "a", 1)])
    )
    await upsert(stubs, network("gb", countries=["GB"]))
    gb = await members(stubs, "gb")
    for channel in ("", "web", "marketplace", "app", "store"):
        # then each channel's listing is what GetAvailability says of each member, summed
        want = await summed(stubs, gb, ["a", "b", "zz"], channel)
        assert await listing(stubs, "gb", ["a", "b", "zz"], channel) == want, channel
    # (by hand, for the plain figure: lon-1 4, lon-2 2, dc-gb 36, man-1 0; b at lon-1)
    assert await listing(stubs, "gb", ["a", "b"]) == [("a", 42, 3), ("b", 1, 1)]
    # web: lon-1 2, lon-2 0 (buffer), dc-gb 26 (the app's 10 kept), man-1 0
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 28, 2)]


async def test_a_listing_follows_each_change_of_its_rows_rules_and_pools(stubs: Stubs) -> None:
    await counted(stubs, {("lon-1", "a"): 5, ("dc-gb", "a"): 10})
    await upsert(stubs, network("gb", countries=["GB"]))
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 15, 2)]
    # a hold, a sale reported by the store, a commit, a release: each is in the next listing
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="w1", lines=[line("lon-1", "a", 2)], channel="web")
    )
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 13, 2)]
    await stubs.stock.ApplyEvents(
        pb.ApplyEventsRequest(events=[delta("e1", "dc-gb", "a", -4, T0 + 1)])
    )
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 9, 2)]
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="w1"))
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 9, 2)]
    # a rule, then a pool for another channel, then safety stock
    await stubs.stock.SetChannelRules(
        pb.SetChannelRulesRequest(rules=[pb.ChannelRule(channel="web", buffer=3)])
    )
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 3, 1)]  # lon-1 0, dc-gb 3
    await stubs.stock.SetPool(
        pb.SetPoolRequest(pools=[pb.Pool(location_id="dc-gb", sku="a", channel="app", units=2)])
    )
    assert await listing(stubs, "gb", ["a"], "web") == [("a", 1, 1)]
    assert await listing(stubs, "gb", ["a"], "app") == [("a", 5, 2)]  # its 2, and lon-1 3
    await stubs.stock.SetSafetyStock(
        pb.SetSafetyStockRequest(entries=[pb.SafetyStockEntry(location_id="lon-1", sku="a", qty=3)])
    )
    assert await listing(stubs, "gb", ["a"]) == [("a", 6, 1)]  # lon-1: 3 - 3; dc-gb: 6


async def test_a_second_listing_is_summed_from_the_view_and_a_change_reads_only_its_row(
    redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    async with served(redis_url) as (app, stubs):
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=ESTATE))
        await counted(stubs, {(p.id, sku): 3 for p in ESTATE for sku in ("a", "b")})
        await upsert(stubs, network("all", types=[STORE, DC, DARK]))
        assert await listing(stubs, "all", ["a", "b"]) == [("a", 21, 7), ("b", 21, 7)]
        before = rows_read(app)
        assert app.view is not None
        await app.view.caught_up()  # a PING sent after the last write has come back
        assert await listing(stubs, "all", ["a", "b"]) == [("a", 21, 7), ("b", 21, 7)]
        assert rows_read(app) == before  # nothing read from Redis
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="r1", lines=[line("lon-1", "a", 3)])
        )
        await app.view.caught_up()
        assert await listing(stubs, "all", ["a", "b"]) == [("a", 18, 6), ("b", 21, 7)]
        assert rows_read(app) == before + 1  # the row held, and only it


async def test_a_write_through_another_process_is_in_a_listing_within_the_lag(
    stubs: Stubs, redis_url: str
) -> None:
    await counted(stubs, {("lon-1", "a"): 5, ("dc-gb", "a"): 10})
    await upsert(stubs, network("gb", countries=["GB"]))
    assert await listing(stubs, "gb", ["a"]) == [("a", 15, 2)]
    async with served(redis_url) as (_, other):
        await other.reservations.Reserve(
            pb.ReserveRequest(reservation_id="o1", lines=[line("dc-gb", "a", 6)])
        )
        await asyncio.sleep(0.25)  # --read-cache-max-lag-ms: 200
        assert await listing(stubs, "gb", ["a"]) == [("a", 9, 2)]


async def test_a_cut_feed_drops_what_the_view_kept_and_the_next_listing_reads_again(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    await counted(stubs, {("lon-1", "a"): 5, ("dc-gb", "a"): 10})
    await upsert(stubs, network("gb", countries=["GB"]))
    assert await listing(stubs, "gb", ["a"]) == [("a", 15, 2)]
    # when every pub/sub connection is cut, and a write made meanwhile by another process
    await kill_subscribers(redis)
    async with served(redis_url) as (_, other):
        await other.reservations.Reserve(
            pb.ReserveRequest(reservation_id="o1", lines=[line("lon-1", "a", 5)])
        )
    # then the listing has it: the view forgot the figures of the cut feed
    await asyncio.sleep(0.25)
    assert await listing(stubs, "gb", ["a"]) == [("a", 10, 1)]


async def test_a_listing_whose_entry_is_dropped_while_it_waits_is_still_answered(
    redis: aioredis.Redis | RedisCluster, redis_url: str
) -> None:
    # given a first listing of a network, waiting for its members' subscriptions, while the
    # view drops every entry (its epoch check found a flush; a lost feed does the same)
    async with served(redis_url) as (app, stubs):
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=ESTATE))
        await counted(stubs, {("lon-1", "a"): 5, ("dc-gb", "a"): 10})
        await upsert(stubs, network("gb", countries=["GB"]))
        view = app.view
        assert view is not None
        waited = view.feeds.confirmed

        async def dropped_meanwhile(within: float) -> None:
            await waited(within)
            view.reset()

        view.feeds.confirmed = dropped_meanwhile  # type: ignore[method-assign]
        # then the listing is answered, from Redis, and the next one as well
        assert await listing(stubs, "gb", ["a"]) == [("a", 15, 2)]
        view.feeds.confirmed = waited  # type: ignore[method-assign]
        assert await listing(stubs, "gb", ["a"]) == [("a", 15, 2)]


async def kill_subscribers(redis: aioredis.Redis | RedisCluster) -> None:
    """Cuts every pub/sub connection (on a cluster: on every node), as a network would."""
    if isinstance(redis, RedisCluster):
        for node in redis.get_primaries():
            await node.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    else:
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")


# -- after a random load, and under a concurrent one ------------------------------------------

SKUS = [f"sku-{i}" for i in range(6)]
CHANNELS = ["", "web", "marketplace", "app", "store"]
NETWORKS = [
    network("gb", countries=["GB"]),
    pb.Network(
        name="uk-ship",
        selectors=[
            pb.LocationSelector(types=[DC], countries=["GB"]),
            pb.LocationSelector(types=[STORE], countries=["GB"], ship_enabled=True),
        ],
    ),
    network("everywhere", types=[STORE, DC, DARK]),
    network("listed", "lon-2", "par-1", "dc-fr"),
]


async def check_every_listing(app: Omnistock, stubs: Stubs) -> None:
    """Each network's listing, for each channel, is the sum over its members of what
    GetAvailability says there (and counts the members with some). With the view, once a
    PING sent after the last write has come back: its figures then come from the view
    unless a change of their row marked them."""
    if app.view is not None:
        await app.view.caught_up()
    for net in NETWORKS:
        around = await members(stubs, net.name)
        for channel in CHANNELS:
            got = await listing(stubs, net.name, SKUS, channel)
            assert got == await summed(stubs, around, SKUS, channel), (net.name, channel)


class RandomLoad:
    """Random steps: a hold for a channel (or none), its commit or release, a stock event,
    a safety stock, a pool, a rule."""

    def __init__(self, stubs: Stubs, seed: int) -> None:
        self.stubs = stubs
        self.rng = random.Random(seed)
        self.held: list[str] = []
        self.where = [p.id for p in ESTATE if p.active]

    async def step(self, n: int) -> None:
        rng = self.rng
        loc, sku = rng.choice(self.where), rng.choice(SKUS)
        kind = rng.choice(["hold"] * 6 + ["settle"] * 4 + ["event"] * 4 + ["safety"] * 2)
        kind = rng.choice(["pool", "rule"]) if rng.random() < 0.05 else kind
        if kind == "settle" and not self.held:
            kind = "hold"
        await getattr(self, kind)(n, loc, sku)

    async def hold(self, n: int, loc: str, sku: str) -> None:
        rng = self.rng
        lines = [line(loc, sku, rng.randint(1, 4))]
        if rng.random() < 0.3:
            lines.append(line(rng.choice(self.where), rng.choice(SKUS), 1))
        got = await self.stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=f"r{n}", lines=lines, channel=rng.choice(CHANNELS))
        )
        if got.HasField("reservation"):
            self.held.append(f"r{n}")

    async def settle(self, n: int, loc: str, sku: str) -> None:
        rid = self.held.pop(self.rng.randrange(len(self.held)))
        if self.rng.random() < 0.5:
            await self.stubs.reservations.Commit(pb.CommitRequest(reservation_id=rid))
        else:
            await self.stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid))

    async def event(self, n: int, loc: str, sku: str) -> None:
        ev = delta(f"e{n}", loc, sku, self.rng.choice([-3, -1, 2, 5]), T0 + n)
        if self.rng.random() < 0.3:
            ev = count(f"e{n}", loc, sku, self.rng.randint(0, 12), T0 + n)
        await self.stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[ev]))

    async def safety(self, n: int, loc: str, sku: str) -> None:
        entry = pb.SafetyStockEntry(location_id=loc, sku=sku, qty=self.rng.randint(0, 3))
        await self.stubs.stock.SetSafetyStock(pb.SetSafetyStockRequest(entries=[entry]))

    async def pool(self, n: int, loc: str, sku: str) -> None:
        rng = self.rng
        pool = pb.Pool(
            location_id=loc, sku=sku, channel=rng.choice(CHANNELS[1:]),
            units=rng.randint(0, 4), fallback=rng.random() < 0.5,
        )  # fmt: skip
        with contextlib.suppress(grpc.aio.AioRpcError):  # more than the row has: refused
            await self.stubs.stock.SetPool(pb.SetPoolRequest(pools=[pool]))

    async def rule(self, n: int, loc: str, sku: str) -> None:
        rule = pb.ChannelRule(channel=self.rng.choice(CHANNELS[1:]), buffer=self.rng.randint(0, 3))
        if self.rng.random() < 0.5:
            rule.max_share = self.rng.choice([0.25, 0.5, 1.0])
        await self.stubs.stock.SetChannelRules(pb.SetChannelRulesRequest(rules=[rule]))


@BOTH_WAYS
async def test_after_a_random_load_each_figure_is_the_sum_over_its_members(
    running: tuple[Omnistock, Stubs],
) -> None:
    # given stock of every sku at every location, and the networks
    app, stubs = running
    load = RandomLoad(stubs, 16)
    await counted(stubs, {(p.id, sku): load.rng.randint(0, 12) for p in ESTATE for sku in SKUS})
    await upsert(stubs, *NETWORKS)
    await check_every_listing(app, stubs)  # (and the view keeps what it read)
    for n in range(240):
        # when holds, commits, releases, events, safety stock (and now and then a pool or a
        # rule) come
        await load.step(n)
        if n % 10 == 9:
            # then every listing is still the sum over its members
            await check_every_listing(app, stubs)


async def test_under_concurrent_holds_a_figure_is_never_negative_nor_above_on_hand(
    stubs: Stubs,
) -> None:
    # given 8 units of each sku at each GB location
    gb = ["dark-lon", "dc-gb", "lon-1", "lon-2", "man-1"]
    await counted(stubs, {(loc, sku): 8 for loc in gb for sku in SKUS})
    await upsert(stubs, network("gb", countries=["GB"]))
    on_hand = 8 * len(gb)
    seen: list[tuple[str, int, int]] = []
    stop = asyncio.Event()

    async def shopper(k: int) -> None:
        rng = random.Random(k)
        for n in range(40):
            lines = [line(rng.choice(gb), rng.choice(SKUS), rng.randint(1, 3))]
            rid = f"c{k}-{n}"
            got = await stubs.reservations.Reserve(
                pb.ReserveRequest(reservation_id=rid, lines=lines, channel=rng.choice(CHANNELS))
            )
            if got.HasField("reservation") and rng.random() < 0.5:
                await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid))
            elif got.HasField("reservation"):
                await stubs.reservations.Commit(pb.CommitRequest(reservation_id=rid))

    async def browser(channel: str) -> None:
        while not stop.is_set():
            seen.extend(await listing(stubs, "gb", SKUS, channel))

    # when six shoppers hold, commit and release while listings are read for each channel
    browsers = [asyncio.create_task(browser(ch)) for ch in CHANNELS]
    await asyncio.gather(*(shopper(k) for k in range(6)))
    stop.set()
    await asyncio.gather(*browsers)
    # then no figure was below 0 or above the units there, nor counted more locations
    assert seen and all(0 <= a <= on_hand and 0 <= n <= len(gb) for _, a, n in seen)
    # and once they are done, every listing is the sum over the members
    for channel in CHANNELS:
        assert await listing(stubs, "gb", SKUS, channel) == await summed(stubs, gb, SKUS, channel)


# -- refusals ----------------------------------------------------------------------------------

BAD_NETWORKS = [
    ("networks", []),
    ("networks[0].name", [pb.Network(name="a b", location_ids=["lon-1"])]),
    ("networks[0].location_ids", [pb.Network(name="n")]),
    ("networks[0].location_ids", [pb.Network(name="n", location_ids=["nowhere"])]),
    ("networks[0].location_ids[0]", [pb.Network(name="n", location_ids=["{lon-1}"])]),
    ("networks[1].name", [network("n", "lon-1"), network("n", "lon-2")]),
    ("networks[0].selectors[0].countries[0]", [network("n", countries=["UK"])]),
    ("networks[0].selectors[0].countries[0]", [network("n", countries=["gb"])]),
    ("networks[0].selectors[0].regions[0]", [network("n", regions=["north west"])]),
    ("networks[0].selectors[0].types[0]", [network("n", types=[9])]),
    ("networks", [network(f"n{i}", "lon-1") for i in range(101)]),
]


@pytest.mark.parametrize(("field", "given"), BAD_NETWORKS)
async def test_a_bad_network_names_its_field_and_changes_nothing(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster, field: str, given: list[pb.Network]
) -> None:
    await upsert(stubs, network("kept", "lon-1"))
    before = await dump(redis)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upsert(stubs, *given)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}: ")
    assert await dump(redis) == before


BAD_LISTINGS = [
    ("network", pb.GetNetworkAvailabilityRequest(skus=["a"])),
    ("skus", pb.GetNetworkAvailabilityRequest(network="gb")),
    ("skus[1]", pb.GetNetworkAvailabilityRequest(network="gb", skus=["a", "b c"])),
    ("channel", pb.GetNetworkAvailabilityRequest(network="gb", skus=["a"], channel="{web}")),
    ("skus", pb.GetNetworkAvailabilityRequest(network="gb", skus=[f"s{i}" for i in range(1001)])),
]


@pytest.mark.parametrize(("field", "request_"), BAD_LISTINGS)
async def test_a_bad_listing_names_its_field(
    stubs: Stubs, field: str, request_: pb.GetNetworkAvailabilityRequest
) -> None:
    await upsert(stubs, network("gb", countries=["GB"]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.availability.GetNetworkAvailability(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}: ")


async def test_an_unknown_network_is_not_found_and_a_listing_past_its_rows_is_refused(
    stubs: Stubs,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listing(stubs, "nowhere", ["a"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "network: no network 'nowhere'"
    # a network of 201 stores: 1,000 skus across it would be 201,000 rows, over 200,000
    many = [place(f"s-{i}") for i in range(201)]
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=many))
    await upsert(stubs, network("many", *(p.id for p in many)))
    skus = [f"s{i}" for i in range(1000)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listing(stubs, "many", skus)
    assert err.value.details() == "skus: 1000 skus x 201 locations is over 200000 rows"
    assert len(await listing(stubs, "many", skus[:995])) == 995  # 199,995 rows: answered


async def dump(redis: aioredis.Redis | RedisCluster) -> dict[bytes, bytes]:
    return {key: await redis.dump(key) for key in await all_keys(redis)}


# -- the read underneath -------------------------------------------------------------------------


async def test_rows_of_many_locations_are_read_in_order_across_several_calls(
    storage: Storage,
) -> None:
    # given 1,200 skus at one location (more than three calls' worth) and 10 at three more
    many = [f"m{i}" for i in range(1200)]
    now = int(time.time() * 1000)
    events = [
        StockEvent(f"c{i}", "big", s, EventKind.COUNT, i % 7, now - 5) for i, s in enumerate(many)
    ]
    await storage.apply_events("big", events, now)
    for loc in ("x1", "x2", "x3"):
        few = [StockEvent(f"c{i}", loc, f"m{i}", EventKind.COUNT, 5, now - 5) for i in range(10)]
        await storage.apply_events(loc, few, now)
    assert len(many) / 2 > ROWS_PER_CALL
    # when they are read for a channel, each location under its own rule, in any order
    reads = [
        MemberRead("x1", ChannelRule(buffer=1), many[:10]),
        MemberRead("big", NO_RULE, many[::-1]),
        MemberRead("x2", ChannelRule(buffer=9), many[:10]),
        MemberRead("x3", ChannelRule(max_share=0.5), [*many[:10], "none"]),
    ]
    got = await storage.network_rows("web", reads)
    # then each figure is the row's, under that location's rule, in the order asked
    assert got[0] == [4] * 10
    assert got[1] == [i % 7 for i in range(1199, -1, -1)]
    assert got[2] == [0] * 10
    assert got[3] == [2] * 10 + [0]
    # and without a channel, the rows' available units
    plain = await storage.network_rows("", [MemberRead("x2", ChannelRule(buffer=9), many[:3])])
    assert plain == [[5, 5, 5]]
