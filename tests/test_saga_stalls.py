"""A saga stalled at each of its steps in turn (as if that one Redis call hung), retried
meanwhile with the same id, and recovered by the sweeper once its time has come: every
answer, the first attempt's as much as the retry's, is the state the reservation ends in
(HELD, COMMITTED or RELEASED: never UNAVAILABLE, never a HELD that is later lost), a
retry's claim never postpones the recovery of the attempt it waits on, and what Redis holds
keeps I1 and I2 (tests/invariants.py). On one Redis and on a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.domain.clock import ManualClock
from engine.domain.model import EventKind, HoldResult, Line, Reservation, StockEvent
from engine.store.storage import Storage
from engine.usecases.reservations import Reservations
from engine.usecases.sweeper import Sweeper

from .conftest import ON_BOTH, register, sweeper_of
from .invariants import assert_reserved_is_held, in_one_state_problems, read_holds

pytestmark = ON_BOTH

LINES = (Line("s1", "a", 2), Line("s2", "a", 2))
LIVENESS = 10.0  # seconds: a call still unanswered by then is stuck (it takes milliseconds)


class Stall:
    """The first call of one Storage method waits, before it reaches Redis, until let go."""

    def __init__(self, storage: Storage, method: str) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        real: Callable[..., Awaitable[Any]] = getattr(storage, method)
        first = True

        async def stalled(*args: Any, **kwargs: Any) -> Any:
            nonlocal first
            if first:
                first = False
                self.reached.set()
                await self.go.wait()
            return await real(*args, **kwargs)

        setattr(storage, method, stalled)


class Seen:
    """Counts the calls of one Storage method that have been answered."""

    def __init__(self, storage: Storage, method: str) -> None:
        self.answered = 0
        real: Callable[..., Awaitable[Any]] = getattr(storage, method)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await real(*args, **kwargs)
            finally:
                self.answered += 1

        setattr(storage, method, counted)


async def setup(storage: Storage, reservations: Reservations, clock: ManualClock) -> Sweeper:
    now = clock.now_ms()
    for loc in ("s1", "s2"):
        count = StockEvent(f"c:{loc}", loc, "a", EventKind.COUNT, 10, now - 10)
        await storage.apply_events(loc, [count], now)
    await register(reservations, "s1", "s2")
    return await sweeper_of(storage, reservations, clock, "s1", "s2")


async def until(check: Callable[[], bool]) -> None:
    """Polls: what it waits for is another task's progress, with no event to wait on."""
    async with asyncio.timeout(LIVENESS):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def recover_when_due(
    reservations: Reservations, clock: ManualClock, sweeper: Sweeper
) -> None:
    """The sweeper passes once the first attempt's recovery time has come (the clock moved
    1 s before the retry, so a retry that had pushed recovery later would not be due)."""
    clock.advance(reservations.timing.saga_timeout_ms - 1000 + 1)
    for _ in range(2):
        await sweeper.sweep()


async def check_ends_clear(
    storage: Storage, reservations: Reservations, answers: list[Reservation]
) -> Reservation:
    final = await reservations.get("r1")
    assert [a.state for a in answers] == [final.state] * len(answers)
    holds = await read_holds(storage, ["s1", "s2"])
    assert_reserved_is_held(holds)
    assert not in_one_state_problems(holds, {"r1": ["s1", "s2"]})
    assert await storage.open_sagas() == []
    return final


def made(result: HoldResult) -> Reservation:
    assert result.reservation is not None, f"no reservation: {result}"
    return result.reservation


# what a stall at each step of a Reserve ends in: stalled before its claim, the retry
# makes it alone; after its claim, recovery rolls it back (RELEASED); after it settled,
# it is HELD whatever comes
RESERVE_STEPS = {
    "claim": "HELD",
    "hold": "RELEASED",
    "settle": "RELEASED",
    "unschedule_saga": "HELD",
}


@pytest.mark.parametrize("step", list(RESERVE_STEPS))
async def test_a_reserve_stalled_at_a_step_and_retried_meanwhile_ends_clear(
    storage: Storage, reservations: Reservations, clock: ManualClock, step: str
) -> None:
    sweeper = await setup(storage, reservations, clock)
    stall = Stall(storage, step)
    polled = Seen(storage, "directory")  # a retry waiting on the first attempt polls it

    first = asyncio.ensure_future(reservations.reserve("r1", LINES, ttl_seconds=60))
    await until(stall.reached.is_set)
    clock.advance(1000)
    retry = asyncio.ensure_future(reservations.reserve("r1", LINES, ttl_seconds=60))
    await until(lambda: retry.done() or polled.answered > 0)
    await recover_when_due(reservations, clock, sweeper)
    retried = made(await asyncio.wait_for(retry, LIVENESS))
    stall.go.set()
    answered = made(await asyncio.wait_for(first, LIVENESS))
    again = made(await reservations.reserve("r1", LINES, ttl_seconds=60))

    final = await check_ends_clear(storage, reservations, [answered, retried, again])
    assert final.state.value == RESERVE_STEPS[step]
    rows = await storage.rows([("s1", "a"), ("s2", "a")])
    held = 2 if final.state.value == "HELD" else 0
    assert [(r.on_hand, r.reserved) for r in rows] == [(10, held), (10, held)]


# a Commit or a Release of a held reservation, stalled at each of its steps: the retry
# finishes it, and the first attempt, let go, answers the same
SETTLE_STEPS = {
    "commit": ("extend_part", "schedule_saga", "settle", "commit_part", "unschedule_saga"),
    "release": ("schedule_saga", "settle", "release_part", "unschedule_saga"),
}
SETTLED = {"commit": ("COMMITTED", 8), "release": ("RELEASED", 10)}  # state, on_hand after


@pytest.mark.parametrize(
    ("call", "step"), [(call, step) for call, steps in SETTLE_STEPS.items() for step in steps]
)
async def test_a_commit_or_release_stalled_at_a_step_and_retried_meanwhile_ends_settled(
    storage: Storage, reservations: Reservations, clock: ManualClock, call: str, step: str
) -> None:
    sweeper = await setup(storage, reservations, clock)
    assert (await reservations.reserve("r1", LINES, ttl_seconds=60)).ok
    settle = getattr(reservations, call)
    stall = Stall(storage, step)

    first = asyncio.ensure_future(settle("r1"))
    await until(stall.reached.is_set)
    clock.advance(1000)
    retried = await asyncio.wait_for(settle("r1"), LIVENESS)
    await recover_when_due(reservations, clock, sweeper)
    stall.go.set()
    answered = await asyncio.wait_for(first, LIVENESS)
    again = await settle("r1")

    final = await check_ends_clear(storage, reservations, [answered, retried, again])
    state, on_hand = SETTLED[call]
    assert final.state.value == state
    rows = await storage.rows([("s1", "a"), ("s2", "a")])
    assert [(r.on_hand, r.reserved) for r in rows] == [(on_hand, 0), (on_hand, 0)]
