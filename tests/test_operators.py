"""OperatorService: a row with its holds, a location, the sources of stock events with their
clocks, the alerts, and the ingest adapters' dead letters, through a real server."""

from __future__ import annotations

import time

import grpc
import pytest
import redis.asyncio as aioredis

from engine.app import Omnistock
from engine.domain.rules import Band
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.bands import RowBands
from engine.store.codecs import ChannelHold

from .grpc_helpers import T0, Stubs, delta, line, seed

DEAD = "omnistock:events:dead"


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def operator(channel: grpc.aio.Channel) -> pb_grpc.OperatorServiceStub:
    return pb_grpc.OperatorServiceStub(channel)


async def test_a_row_shows_every_field_and_its_holds_oldest_first(
    stubs: Stubs, operator: pb_grpc.OperatorServiceStub
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    for rid, qty in (("r-first", 3), ("r-second", 2)):
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line("s1", "a", qty)])
        )
    got = await operator.GetRow(pb.GetRowRequest(location_id="s1", sku="a"))
    assert (got.level.on_hand, got.level.reserved, got.level.available) == (10, 5, 5)
    assert got.level.as_of == T0
    assert [(h.reservation_id, h.qty) for h in got.holds] == [("r-first", 3), ("r-second", 2)]
    assert all(h.held_at > 0 for h in got.holds)


async def test_a_row_shows_the_band_its_crossings_were_last_checked_in(
    stubs: Stubs, operator: pb_grpc.OperatorServiceStub, server: Omnistock
) -> None:
    # given a row of 2, never checked for band crossings
    await seed(stubs, {("s1", "a"): 2})
    got = await operator.GetRow(pb.GetRowRequest(location_id="s1", sku="a"))
    assert dict(got.detected_bands) == {}
    # when it is checked with LOW at 3, for no channel and for the web
    web = ChannelHold("web")
    rows = [RowBands("a", [Band(low=3), Band(low=1)])]
    await server.storage.check_bands("s1", T0, 0, [ChannelHold(), web], rows)
    # then it shows the band found for each
    got = await operator.GetRow(pb.GetRowRequest(location_id="s1", sku="a"))
    assert dict(got.detected_bands) == {"": pb.STOCK_STATUS_LOW, "web": pb.STOCK_STATUS_IN_STOCK}


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        (pb.GetRowRequest(location_id="nowhere", sku="a"), grpc.StatusCode.NOT_FOUND, "nowhere"),
        (pb.GetRowRequest(location_id="s1", sku="a b"), grpc.StatusCode.INVALID_ARGUMENT, "sku"),
        (
            pb.GetRowRequest(location_id="", sku="a"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "location_id",
        ),
    ],
)
async def test_a_row_lookup_says_what_is_wrong(
    stubs: Stubs,
    operator: pb_grpc.OperatorServiceStub,
    request_: pb.GetRowRequest,
    code: grpc.StatusCode,
    says: str,
) -> None:
    await seed(stubs, {("s1", "a"): 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await operator.GetRow(request_)
    assert err.value.code() == code
    assert says in (err.value.details() or "")


async def test_a_location_shows_its_rows_and_held_reservations(
    stubs: Stubs, operator: pb_grpc.OperatorServiceStub
) -> None:
    await seed(stubs, {("s1", "a"): 5, ("s1", "b"): 5, ("s1", "c"): 0})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 1)])
    )
    got = await operator.GetLocation(pb.GetLocationRequest(location_id="s1"))
    assert (got.location.id, got.rows, got.held_reservations) == ("s1", 3, 1)


async def test_sources_show_their_events_and_a_clock_behind_is_flagged_and_alerted(
    stubs: Stubs, operator: pb_grpc.OperatorServiceStub, server: Omnistock
) -> None:
    await seed(stubs, {("s1", "a"): 100})
    now = int(time.time() * 1000)
    on_time = [delta(f"ok-{i}", "s1", "a", -1, now - 50, source="till-1") for i in range(3)]
    late = [delta(f"late-{i}", "s1", "a", -1, now - 900_000, source="till-2") for i in range(2)]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=on_time + late))
    got = {s.source: s for s in (await operator.ListSources(pb.ListSourcesRequest())).sources}
    assert got["till-1"].events == 3 and got["till-1"].clock == "ok"
    assert got["till-2"].events == 2 and got["till-2"].clock == "behind"
    assert got["till-2"].clock_offset_ms >= 900_000
    assert got["till-2"].last_source_time == now - 900_000
    assert got[""].events == 1  # the seeding count names no source: no one clock to judge
    assert got[""].clock == "ok"

    skewed = server.metrics.registry.get_sample_value(
        "omnistock_clock_skewed_events_total", {"clock": "behind"}
    )
    assert skewed == 2
    alerts = (await operator.ListAlerts(pb.ListAlertsRequest())).alerts
    assert [(a.kind, a.details["source"], a.details["clock"]) for a in alerts] == [
        ("clock_skew", "till-2", "behind")
    ]


async def test_alerts_page_after_an_id(stubs: Stubs, operator: pb_grpc.OperatorServiceStub) -> None:
    await seed(stubs, {("s1", "a"): 1})
    now = int(time.time() * 1000)
    for i in range(3):  # each a source of its own, ahead: rejected, and alerted
        ahead = delta(f"f-{i}", "s1", "a", -1, now + 3_600_000, source=f"fast-{i}")
        await stubs.stock.StreamEvents(iter([pb.StreamEventsRequest(events=[ahead])])).read()
    first = (await operator.ListAlerts(pb.ListAlertsRequest(limit=2))).alerts
    assert [a.details["source"] for a in first] == ["fast-0", "fast-1"]
    assert all(a.details["clock"] == "ahead" for a in first)
    rest = (await operator.ListAlerts(pb.ListAlertsRequest(after=first[-1].id))).alerts
    assert [a.details["source"] for a in rest] == ["fast-2"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await operator.ListAlerts(pb.ListAlertsRequest(after="{omnistock}:locations"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_dead_letters_are_listed_filtered_and_deleted(
    operator: pb_grpc.OperatorServiceStub, redis: aioredis.Redis
) -> None:
    for origin, reason in (
        ("stream", "sku: bad"),
        ("shopify", "available: missing"),
        ("stream", "kind: bad"),
    ):
        await redis.xadd(
            DEAD, {"dead.from": origin, "dead.reason": reason, "dead.at": "5", "x": "1"}
        )
    listed = (await operator.ListDeadLetters(pb.ListDeadLettersRequest(origin="stream"))).letters
    assert [(d.origin, d.reason) for d in listed] == [
        ("stream", "sku: bad"),
        ("stream", "kind: bad"),
    ]
    assert listed[0].fields["x"] == b"1" and listed[0].at == 5
    only = await operator.ListDeadLetters(pb.ListDeadLettersRequest(reason_contains="available"))
    assert [d.origin for d in only.letters] == ["shopify"]
    done = await operator.DeleteDeadLetters(pb.DeleteDeadLettersRequest(ids=[listed[0].id]))
    assert done.deleted == 1
    assert await redis.xlen(DEAD) == 2


async def test_a_location_shows_its_numbered_sources_and_their_open_gaps(
    stubs: Stubs, operator: pb_grpc.OperatorServiceStub
) -> None:
    # a source that went silent after a gap: its gap is never reported by a later event,
    # but the location shows it
    await seed(stubs, {("s1", "a"): 10})
    now = int(time.time() * 1000)
    sent = [delta(f"t-{n}", "s1", "a", -1, now, source="till-7", sequence=n) for n in (1, 2, 6)]
    sent.append(delta("p-1", "s1", "a", -1, now, source="pos-2", sequence=1))
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=sent))
    got = await operator.GetLocation(pb.GetLocationRequest(location_id="s1"))
    numbered = {n.source: n for n in got.numbered_sources}
    assert numbered["till-7"].highest == 6
    assert [(g.first, g.last) for g in numbered["till-7"].gaps] == [(3, 5)]
    assert numbered["till-7"].gaps[0].opened_at >= now
    assert (numbered["pos-2"].highest, list(numbered["pos-2"].gaps)) == (1, [])
