"""A Reserve at one location on a Redis Cluster sends its directory entry (place) and its
hold together, each to its own node. Each of them failing in turn, before it reached Redis
or after (its answer lost): the call answers UNAVAILABLE, what it held is let go at once
unless its fate is unknown, a retry answers HELD, and I1 holds throughout. An id raced with
other lines is one reservation at most, with nothing left held for the others."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.domain.clock import ManualClock
from engine.domain.errors import AlreadyExists, NotFound, Unavailable
from engine.domain.model import EventKind, HoldResult, Line, ReservationState, StockEvent
from engine.store.storage import Storage
from engine.usecases.reservations import Reservations

from .conftest import register
from .invariants import assert_reserved_is_held, read_holds

pytestmark = pytest.mark.parametrize("redis_url", ["cluster_url"], ids=["cluster"], indirect=True)

LOCATIONS = ("s1", "s2", "s3")  # on three different nodes (tests/test_cluster.py)


class Fail:
    """The next call of one Storage method fails as a lost connection does: before it
    reaches Redis, or once Redis has done it (the answer lost)."""

    def __init__(self, storage: Storage, method: str, after: bool) -> None:
        real: Callable[..., Awaitable[Any]] = getattr(storage, method)

        async def failing(*args: Any, **kwargs: Any) -> Any:
            setattr(storage, method, real)
            if after:
                await real(*args, **kwargs)
            raise Unavailable(f"{method}: connection lost")

        setattr(storage, method, failing)


async def stocked(storage: Storage, reservations: Reservations, clock: ManualClock) -> None:
    now = clock.now_ms()
    for loc in LOCATIONS:
        count = StockEvent(f"c:{loc}", loc, "a", EventKind.COUNT, 10, now - 10)
        await storage.apply_events(loc, [count], now)
    await register(reservations, *LOCATIONS)


async def reserved(storage: Storage) -> dict[str, int]:
    rows = await storage.rows([(loc, "a") for loc in LOCATIONS])
    holds = await read_holds(storage, list(LOCATIONS))
    assert_reserved_is_held(holds)
    return {loc: row.reserved for loc, row in zip(LOCATIONS, rows, strict=True)}


# (step failed, after it reached Redis) -> units still held once the call failed: only a
# hold whose answer was lost may stay (its fate unknown; a retry finds it, else it expires)
FAILURES = {
    ("place", False): 0,
    ("place", True): 0,
    ("hold", False): 0,
    ("hold", True): 2,
}


@pytest.mark.parametrize(("step", "after"), list(FAILURES), ids=lambda v: str(v))
async def test_a_reserve_whose_place_or_hold_fails_lets_go_what_it_held_and_a_retry_holds(
    storage: Storage, reservations: Reservations, clock: ManualClock, step: str, after: bool
) -> None:
    # given stock, and the next call of one step of a one-location Reserve failing
    await stocked(storage, reservations, clock)
    lines = (Line("s1", "a", 2),)
    Fail(storage, step, after)
    # when the Reserve is made
    with pytest.raises(Unavailable):
        await reservations.reserve("r1", lines, ttl_seconds=60)
    # then it is UNAVAILABLE, and nothing is held unless the hold's fate is unknown
    left = FAILURES[(step, after)]
    assert await reserved(storage) == {"s1": left, "s2": 0, "s3": 0}
    if left:
        assert (await reservations.get("r1")).state is ReservationState.HELD
    else:
        with pytest.raises(NotFound):
            await reservations.get("r1")
    # and a retry holds it, once, however often it is made
    for _ in range(2):
        again = await reservations.reserve("r1", lines, ttl_seconds=60)
        assert again.reservation is not None
        assert again.reservation.state is ReservationState.HELD
    assert await reserved(storage) == {"s1": 2, "s2": 0, "s3": 0}
    await reservations.release("r1")
    assert await reserved(storage) == {"s1": 0, "s2": 0, "s3": 0}


# two uses of one id with other lines, raced: at other locations, at the same location
RACES = {
    "other locations": (Line("s2", "a", 1), Line("s3", "a", 1)),
    "same location": (Line("s2", "a", 1), Line("s2", "a", 2)),
}


@pytest.mark.parametrize("race", list(RACES))
async def test_an_id_raced_with_other_lines_is_one_reservation_and_holds_nothing_for_others(
    storage: Storage, reservations: Reservations, clock: ManualClock, race: str
) -> None:
    # given stock, and many concurrent tries of one id, half with one line, half another
    await stocked(storage, reservations, clock)
    tries = [line for line in RACES[race] for _ in range(10)]

    async def attempt(line: Line) -> HoldResult | AlreadyExists:
        try:
            return await reservations.reserve("r", (line,), ttl_seconds=60)
        except AlreadyExists as refused:
            return refused

    # when they all run
    answers = await asyncio.gather(*map(attempt, tries))
    # then each is HELD or ALREADY_EXISTS, and every HELD one is for the same line
    won = {line for line, a in zip(tries, answers, strict=True) if isinstance(a, HoldResult)}
    for line, answer in zip(tries, answers, strict=True):
        if isinstance(answer, HoldResult):
            assert answer.reservation is not None, answer
            assert answer.reservation.lines == (line,)
    assert len(won) <= 1
    # and the store holds exactly that reservation, and nothing for the others
    held = {loc: 0 for loc in LOCATIONS}
    for line in won:
        held[line.location] += line.qty
        assert (await reservations.get("r")).lines == (line,)
    assert await reserved(storage) == held
    if not won:
        with pytest.raises(NotFound):
            await reservations.get("r")
