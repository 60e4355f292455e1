"""Stock band crossings on the alerts stream (issue 16): every fall of a row into LOW or OUT
is found once, however many check it at once, and put on the alerts stream once."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from engine.domain.model import Band, EventKind, StockEvent, StockStatus
from engine.store.bands import RowBands
from engine.store.codecs import ChannelHold
from engine.store.storage import Storage

from .conftest import ON_BOTH

pytestmark = ON_BOTH


# -- the store's side: found once, moved once ------------------------------------------------

L = "L1"
NOW = int(time.time() * 1000)


async def _change(storage: Storage, eid: str, kind: EventKind, qty: int, t: int) -> None:
    await storage.apply_events(L, [StockEvent(eid, L, "a", kind, qty, t)], NOW)


async def _check(storage: Storage, acked: int = 0) -> list[tuple[str, str, int]]:
    found = await storage.check_bands(L, acked, [ChannelHold()], [RowBands("a", [Band(low=3)])])
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
    found = await storage.check_bands(L, 0, [ChannelHold()], [RowBands("a", [Band(low=3)])])
    got = await asyncio.gather(*(storage.publish_crossings(L, found) for _ in range(3)))
    # then the stream has it once, and a check told so leaves the outbox empty
    assert sorted(len(put) for _, put in got) == [0, 0, 1]
    assert [put for _, put in got if put] == [[StockStatus.LOW]]
    assert await redis.xlen("{omnistock}:alerts") == 1
    assert await _check(storage, acked=got[0][0]) == []
