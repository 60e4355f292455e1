"""Stock band crossings on the alerts stream (issue 16): every fall of a row into LOW or OUT,
for no channel or for a channel with bands of its own, is alerted once with its row and
channel, whichever write made it (holds, events, expiry) and however many server processes
run; a rise is not alerted; the detector's standby takes over without loss or duplicates;
and a process with --no-band-alerts finds none."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from engine.app import Omnistock
from engine.domain.clock import ManualClock
from engine.domain.model import EventKind, StockEvent
from engine.domain.rules import Band, StockStatus
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.bands import RowBands
from engine.store.codecs import ChannelHold
from engine.store.keys import LEASES
from engine.store.storage import Storage
from engine.usecases.bandalerts import Role

from .conftest import BUCKETS, ON_BOTH, served
from .grpc_helpers import T0, Stubs, delta, line, seed
from .processes import ServerProcess

pytestmark = ON_BOTH
T = TypeVar("T")
Alerted = tuple[str, str, str, str, str, str]  # location, sku, channel, was, status, available
IN = pb.STOCK_STATUS_IN_STOCK


@pytest.fixture
async def detecting(
    redis: aioredis.Redis, redis_url: str
) -> AsyncIterator[tuple[Omnistock, Stubs]]:
    """A server that finds band crossings (its detector, as the only one), on a flushed store."""
    async with served(redis_url, no_band_alerts=False) as (app, stubs):
        yield app, stubs


async def until(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float = 20.0
) -> T:
    """Reads until `done` says yes, for at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        got = await read()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"still {got!r} after {within}s"
        await asyncio.sleep(0.05)


async def band_alerts(stubs: Stubs) -> list[Alerted]:
    got = (await stubs.operator.ListAlerts(pb.ListAlertsRequest(limit=1000))).alerts
    fields = ("location_id", "sku", "channel", "was", "status", "available")
    return [tuple(a.details[f] for f in fields) for a in got if a.kind == "band"]  # type: ignore[misc]


async def alerted(stubs: Stubs, n: int, within: float = 20.0) -> list[Alerted]:
    """The band alerts, once there are at least n."""
    return await until(lambda: band_alerts(stubs), lambda got: len(got) >= n, within)


async def detected(stubs: Stubs, loc: str, sku: str) -> dict[str, int]:
    got = await stubs.operator.GetRow(pb.GetRowRequest(location_id=loc, sku=sku))
    return dict(got.detected_bands)


async def followed(stubs: Stubs, loc: str, sku: str, channels: tuple[str, ...] = ("",)) -> None:
    """Touches the row (one unit held and let go) until the detector has checked it for each
    of `channels`: from then on it follows the row's location, and the row has its bands."""
    deadline = time.monotonic() + 20
    for i in range(1_000_000):
        if set(channels) <= set(await detected(stubs, loc, sku)):
            return
        assert time.monotonic() < deadline, f"{loc}/{sku} never checked"
        await touch(stubs, loc, sku, str(i))
        await asyncio.sleep(0.1)


async def touch(stubs: Stubs, loc: str, sku: str, name: str) -> None:
    """Changes the row and back: one unit held, and let go."""
    rid = f"touch-{loc}-{sku}-{name}"
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id=rid, lines=[line(loc, sku, 1)])
    )
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid))


async def standing_by(app: Omnistock, stubs: Stubs, loc: str, sku: str) -> None:
    """Touches the row until the standby has seen it change: it follows the location."""
    detector = app.band_alerts
    assert detector is not None
    deadline = time.monotonic() + 20
    for i in range(1_000_000):
        if any(sku in generation.get(loc, ()) for generation in detector.changed.kept):
            return
        assert time.monotonic() < deadline, f"the standby never saw {loc}/{sku} change"
        await touch(stubs, loc, sku, f"standby-{i}")
        await asyncio.sleep(0.1)


async def bands(stubs: Stubs, *given: pb.StockBand) -> None:
    await stubs.stock.SetStockBands(pb.SetStockBandsRequest(bands=list(given)))


async def hold(stubs: Stubs, rid: str, qty: int, **request: object) -> None:
    got = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id=rid, lines=[line("s1", "a", qty)], **request)  # type: ignore[arg-type]
    )
    assert got.reservation.state == pb.RESERVATION_STATE_HELD, got


def crossings(app: Omnistock, status: str) -> float:
    counted = app.metrics.registry.get_sample_value(
        "omnistock_band_crossings_total", {"status": status}
    )
    return counted or 0.0


async def test_holds_falling_into_low_then_out_are_alerted_once_each_in_order(
    detecting: tuple[Omnistock, Stubs],
) -> None:
    server, stubs = detecting
    # given a row of 10, checked once, with LOW at 3 or less
    await seed(stubs, {("s1", "a"): 10})
    await followed(stubs, "s1", "a")
    await bands(stubs, pb.StockBand(low=3))
    # when holds take it to 4 (in stock), 3 (low), then 0 (out)
    await hold(stubs, "r1", 6)
    await hold(stubs, "r2", 1)
    await alerted(stubs, 1)
    await hold(stubs, "r3", 3)
    # then the two falls are alerted, in order, with the row and no channel
    assert await alerted(stubs, 2) == [
        ("s1", "a", "", "IN_STOCK", "LOW", "3"),
        ("s1", "a", "", "LOW", "OUT", "0"),
    ]
    # and when the holds are let go (in stock again: no alert), a fall alerts anew
    for rid in ("r2", "r3"):
        await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid))
    await until(lambda: detected(stubs, "s1", "a"), lambda got: got[""] == IN)
    await hold(stubs, "r4", 2)
    got = await alerted(stubs, 3)
    assert got[2:] == [("s1", "a", "", "IN_STOCK", "LOW", "2")]
    assert (crossings(server, "LOW"), crossings(server, "OUT")) == (2, 1)
    row = await stubs.operator.GetRow(pb.GetRowRequest(location_id="s1", sku="a"))
    assert dict(row.detected_bands) == {"": pb.STOCK_STATUS_LOW}


async def test_a_channel_with_its_own_band_is_alerted_for_itself(
    detecting: tuple[Omnistock, Stubs],
) -> None:
    _, stubs = detecting
    # given a row of 10, the web kept off its last 4 and LOW for it at 2, checked once
    await seed(stubs, {("s1", "a"): 10})
    await stubs.stock.SetChannelRules(
        pb.SetChannelRulesRequest(rules=[pb.ChannelRule(channel="web", buffer=4)])
    )
    await bands(stubs, pb.StockBand(channel="web", low=2))
    await followed(stubs, "s1", "a", ("", "web"))
    # when holds take it to 5 (the web may hold 1), to 1 (the web 0), then to 0
    await hold(stubs, "r1", 5)
    await alerted(stubs, 1)
    await hold(stubs, "r2", 4)
    await alerted(stubs, 2)
    await hold(stubs, "r3", 1)
    # then the web's falls are alerted for the web, and the row's for no channel
    assert await alerted(stubs, 3) == [
        ("s1", "a", "web", "IN_STOCK", "LOW", "1"),
        ("s1", "a", "web", "LOW", "OUT", "0"),
        ("s1", "a", "", "IN_STOCK", "OUT", "0"),
    ]


async def test_stock_events_and_expiry_are_checked_too(
    redis: aioredis.Redis, redis_url: str
) -> None:
    # given a row of 10, checked once, LOW at 3, on a server whose clock moves when told
    clock = ManualClock(int(time.time() * 1000))
    async with served(redis_url, clock, no_band_alerts=False) as (_, stubs):
        await seed(stubs, {("s1", "a"): 10})
        await followed(stubs, "s1", "a")
        await bands(stubs, pb.StockBand(low=3))
        # when a store's sale takes it to 3, and a hold of a minute to 0
        sale = delta("d1", "s1", "a", -7, T0 + 1)
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[sale]))
        await alerted(stubs, 1)
        await hold(stubs, "r1", 3, ttl_seconds=60.0)
        await alerted(stubs, 2)
        # and the hold expires (LOW again: a rise, not alerted), then a hold takes it to 0
        clock.advance(61_000)
        low = pb.STOCK_STATUS_LOW
        await until(lambda: detected(stubs, "s1", "a"), lambda got: got[""] == low)
        await hold(stubs, "r2", 3)
        # then each fall is alerted, the one after the expiry too
        assert await alerted(stubs, 3) == [
            ("s1", "a", "", "IN_STOCK", "LOW", "3"),
            ("s1", "a", "", "LOW", "OUT", "0"),
            ("s1", "a", "", "LOW", "OUT", "0"),
        ]


async def test_two_processes_alert_each_crossing_once_and_the_standby_carries_on(
    redis: aioredis.Redis, redis_url: str
) -> None:
    # given two server processes on one store: the first finds crossings, the second stands by
    async with contextlib.AsyncExitStack() as first_up, contextlib.AsyncExitStack() as second_up:
        first, one = await first_up.enter_async_context(served(redis_url, no_band_alerts=False))
        second, two = await second_up.enter_async_context(served(redis_url, no_band_alerts=False))
        assert (await _role(first), await _role(second)) == (Role.DETECTOR, Role.STANDBY)
        await seed(one, {("s1", "a"): 10})
        await followed(two, "s1", "a")
        await bands(one, pb.StockBand(low=3))
        # when holds through either take the row into LOW
        await hold(one, "r1", 4)
        await hold(two, "r2", 3)
        await alerted(two, 1)
        await standing_by(second, two, "s1", "a")
        # and the first process stops, the second takes over, and a hold takes it to OUT
        await first_up.aclose()
        await until(lambda: _role(second), lambda role: role is Role.DETECTOR)
        await hold(two, "r3", 3)
        # then each crossing was alerted once, each by one process
        assert await alerted(two, 2) == [
            ("s1", "a", "", "IN_STOCK", "LOW", "3"),
            ("s1", "a", "", "LOW", "OUT", "0"),
        ]
        assert (crossings(first, "LOW"), crossings(first, "OUT")) == (1, 0)
        assert (crossings(second, "LOW"), crossings(second, "OUT")) == (0, 1)


async def _role(app: Omnistock) -> Role:
    assert app.band_alerts is not None
    return app.band_alerts.role


async def test_a_crossing_while_the_detector_is_dead_is_alerted_by_its_standby(
    redis: aioredis.Redis, redis_url: str, spawn: Callable[..., ServerProcess]
) -> None:
    # given the detector in a server process of its own, and a standby in this one
    detector = spawn(
        "--redis-url", redis_url, "--metrics-port", "0", "--stock-buckets", str(BUCKETS)
    )
    await detector.start()
    await until(lambda: redis.get(LEASES[0]), lambda held: held is not None)
    async with served(redis_url, no_band_alerts=False) as (standby, stubs):
        assert await _role(standby) is Role.STANDBY
        await seed(stubs, {("s1", "a"): 10})
        await followed(stubs, "s1", "a")
        await bands(stubs, pb.StockBand(low=3))
        await hold(stubs, "r1", 7)
        await alerted(stubs, 1)
        await standing_by(standby, stubs, "s1", "a")
        # when the detector is killed, and the row falls to OUT while its lease still stands
        await detector.kill()
        await redis.set(LEASES[0], "the dead detector", px=60_000)
        await hold(stubs, "r2", 3)
        # then once its lease lapses the standby takes over and alerts the fall, once
        await redis.delete(LEASES[0])
        got = await alerted(stubs, 2)
        assert got == [("s1", "a", "", "IN_STOCK", "LOW", "3"), ("s1", "a", "", "LOW", "OUT", "0")]
        assert await _role(standby) is Role.DETECTOR


async def test_a_process_with_band_alerts_off_finds_none(
    redis: aioredis.Redis, redis_url: str
) -> None:
    # given a process that does not look for crossings
    async with served(redis_url, no_band_alerts=True) as (off, stubs):
        assert off.band_alerts is None
        assert [await redis.get(lease) for lease in LEASES] == [None, None]
        # when a row falls into LOW
        await seed(stubs, {("s1", "a"): 10})
        await bands(stubs, pb.StockBand(low=3))
        await hold(stubs, "r1", 7)
        # then nothing is alerted: a process that does, started later, alerts only what
        # falls after it first checked the row
        async with served(redis_url, no_band_alerts=False):
            await followed(stubs, "s1", "a")
            await hold(stubs, "r2", 3)
            assert await alerted(stubs, 1) == [("s1", "a", "", "LOW", "OUT", "0")]


# -- the store's side: found once, moved once ------------------------------------------------

L = "L1"
NOW = int(time.time() * 1000)


async def _change(storage: Storage, eid: str, kind: EventKind, qty: int, t: int) -> None:
    await storage.apply_events(L, [StockEvent(eid, L, "a", kind, qty, t)], NOW)


async def _check(storage: Storage, acked: int = 0) -> list[tuple[str, str, int]]:
    found = await storage.check_bands(
        L, NOW, acked, [ChannelHold()], [RowBands("a", [Band(low=3)])]
    )
    return [(c.was, c.status, c.number) for c in found]


async def test_two_checks_at_once_find_a_crossing_once_and_it_is_put_on_the_stream_once(
    storage: Storage, redis: aioredis.Redis
) -> None:
    # given a row of 10 checked once (its first band: no crossing), then a sale to 2
    await _change(storage, "c1", EventKind.COUNT, 10, NOW - 1000)
    assert await _check(storage) == []
    await _change(storage, "d1", EventKind.DELTA, -8, NOW - 500)
    # when two detectors check it at once
    first, second = await asyncio.gather(_check(storage), _check(storage))
    # then the crossing is found once: each sees it in the outbox, with one number
    assert first == second and [(w, s) for w, s, _ in first] == [("IN_STOCK", "LOW")]
    # when both put it on the alerts stream, and one more is put that died before it could
    found = await storage.check_bands(L, NOW, 0, [ChannelHold()], [RowBands("a", [Band(low=3)])])
    got = await asyncio.gather(*(storage.publish_crossings(L, found) for _ in range(3)))
    # then the stream has it once, and a check told so leaves the outbox empty
    assert sorted(len(put) for _, put in got) == [0, 0, 1]
    assert [put for _, put in got if put] == [[StockStatus.LOW]]
    assert await redis.xlen("{omnistock}:alerts") == 1
    assert await _check(storage, acked=got[0][0]) == []
