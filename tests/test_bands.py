"""Stock bands (issue 16): each level served says whether its row is IN_STOCK, LOW or OUT by
its thresholds for the asking channel (per row, location, location type or default; the
channel's own before any channel's), and a watch with bands_only hears exactly the crossings,
in order, not every unit."""

from __future__ import annotations

import grpc
import pytest

from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import ON_BOTH
from .grpc_helpers import T0, Stubs, delta, line, seed

pytestmark = ON_BOTH
IN, LOW, OUT = pb.STOCK_STATUS_IN_STOCK, pb.STOCK_STATUS_LOW, pb.STOCK_STATUS_OUT


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def bands(stubs: Stubs, *given: pb.StockBand) -> int:
    return (await stubs.stock.SetStockBands(pb.SetStockBandsRequest(bands=list(given)))).version


async def status(stubs: Stubs, loc: str, sku: str, channel: str = "") -> int:
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=[sku], location_ids=[loc], channel=channel)
    )
    return got.levels[0].status


async def test_out_at_nothing_by_default_and_each_scope_and_channel_wins_in_turn(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 4, ("s1", "b"): 0, ("s2", "a"): 4})
    assert (await status(stubs, "s1", "a"), await status(stubs, "s1", "b")) == (IN, OUT)
    await bands(stubs, pb.StockBand(low=5))  # the default for every channel
    assert (await status(stubs, "s1", "a"), await status(stubs, "s2", "a")) == (LOW, LOW)
    await bands(
        stubs,
        pb.StockBand(location_type=pb.LOCATION_TYPE_STORE, low=2),
        pb.StockBand(location_id="s2", sku="a", low=3, out=1),
        pb.StockBand(channel="web", location_id="s1", low=4, out=4),
    )
    assert await status(stubs, "s1", "a") == IN  # the store type's 2
    assert await status(stubs, "s2", "a") == IN  # its row's 3
    assert await status(stubs, "s1", "a", "web") == OUT  # the web's own, at s1
    assert await status(stubs, "s2", "a", "web") == IN  # no web band at s2: any channel's
    await bands(stubs, pb.StockBand(channel="web", location_id="s1", remove=True))
    assert await status(stubs, "s1", "a", "web") == IN


async def test_a_listing_gives_each_row_its_own_band_among_its_locations(
    stubs: Stubs, redis_url: str
) -> None:
    # given rows at two locations, one row with a band of its own, the others their
    # location's (looked up once for a run of rows at a location)
    await seed(stubs, {(loc, sku): 3 for loc in ("s1", "s2") for sku in "abc"})
    await bands(
        stubs,
        pb.StockBand(location_id="s1", low=5),
        pb.StockBand(location_id="s1", sku="b", low=1),
        pb.StockBand(location_id="s2", sku="c", low=3, out=3),
    )
    # when they are listed in one call, then each row is in its own band
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["a", "b", "c"], location_ids=["s1", "s2"])
    )
    assert [(lv.location_id, lv.sku, lv.status) for lv in got.levels] == [
        ("s1", "a", LOW),
        ("s1", "b", IN),
        ("s1", "c", LOW),
        ("s2", "a", IN),
        ("s2", "b", IN),
        ("s2", "c", OUT),
    ]


async def test_a_channels_band_is_of_what_it_may_hold(stubs: Stubs, redis_url: str) -> None:
    await seed(stubs, {("s1", "a"): 4})
    await stubs.stock.SetChannelRules(
        pb.SetChannelRulesRequest(rules=[pb.ChannelRule(channel="web", buffer=4)])
    )
    assert (await status(stubs, "s1", "a"), await status(stubs, "s1", "a", "web")) == (IN, OUT)


@pytest.mark.parametrize(
    ("band", "field"),
    [
        (pb.StockBand(low=1, out=2), "bands[0].low"),
        (pb.StockBand(low=-1), "bands[0].low"),
        (pb.StockBand(low=2, out=-1), "bands[0].out"),
        (pb.StockBand(sku="a", low=1), "bands[0].location_id"),
        (pb.StockBand(channel="w b", low=1), "bands[0].channel"),
        (pb.StockBand(location_id="nowhere", low=1), "bands[].location_id"),
    ],
)
async def test_a_bad_band_is_refused_naming_its_field(
    stubs: Stubs, redis_url: str, band: pb.StockBand, field: str
) -> None:
    await seed(stubs, {("s1", "a"): 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bands(stubs, band)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()


async def test_a_bands_only_watch_hears_exactly_the_crossings_in_order(
    stubs: Stubs, redis_url: str
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await bands(stubs, pb.StockBand(low=3))
    watch = stubs.availability.WatchAvailability(
        pb.WatchAvailabilityRequest(
            skus=["a"], location_ids=["s1"], send_current=True, bands_only=True
        )
    )
    opening = await watch.read()
    assert (opening.current, opening.level.status) == (True, IN)
    # 10 -> 9 -> 7 (in), 3 (low), 2 (low), 0 (out), 0 (out, held more of), then 6 (in)
    for i, qty in enumerate((1, 2)):
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=f"r{i}", lines=[line("s1", "a", qty)])
        )
    sales = [delta(f"d{i}", "s1", "a", q, T0 + 1 + i) for i, q in enumerate((-4, -1, -2, 6))]
    for sale in sales:
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[sale]))
    got = [(await watch.read()).level for _ in range(3)]
    assert [(lv.status, lv.available) for lv in got] == [(LOW, 3), (OUT, 0), (IN, 6)]
    watch.cancel()
