"""A saga stalled at each of its steps in turn (as if that one Redis call hung), retried
meanwhile with the same id, and recovered by the sweeper once its time has come: every
answer, the first attempt's as much as the retry's, is the state the reservation ends in
(HELD, COMMITTED or RELEASED: never UNAVAILABLE, never a HELD that is later lost), a
retry's claim never postpones the recovery of the attempt it waits on, and what Redis holds
keeps I1 and I2 (tests/invariants.py). On one Redis and on a cluster.

The same for MoveLine: a move stalled at each step and retried moves the line once; a move
whose caller died after each step is finished (once its line left the source) or rolled
back by recovery, and the dead caller's steps still on their way land nowhere."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.domain.clock import ManualClock
from engine.domain.model import EventKind, HoldResult, Line, Reservation, StockEvent
from engine.domain.moves import Move
from engine.store.moves import MoveIn
from engine.store.replies import MoveClaim, Reply
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


async def setup(
    storage: Storage, reservations: Reservations, clock: ManualClock, *more: str
) -> Sweeper:
    """10 of sku a at s1, s2 and the locations `more`, and a sweeper of them all."""
    now, locations = clock.now_ms(), ("s1", "s2", *more)
    for loc in locations:
        count = StockEvent(f"c:{loc}", loc, "a", EventKind.COUNT, 10, now - 10)
        await storage.apply_events(loc, [count], now)
    await register(reservations, *locations)
    return await sweeper_of(storage, reservations, clock, *locations)


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


# -- MoveLine --------------------------------------------------------------------------------

MOVE = Move("s1", "a", 0, "s3")
MOVED = (Line("s2", "a", 2), Line("s3", "a", 2))  # LINES with s1's line at s3
# what recovery does to a move stalled at each step: stalled before its claim, or once
# settled, nothing (the retry moved it, or it was done); after its claim and before its line
# left s1, roll it back (and the retry moves it); after, finish it
MOVE_STEPS = {
    "claim_move": None,
    "move_in": "move_rolled_back",
    "move_out": "move_rolled_back",
    "settle_move": "moved",
    "unschedule_saga": None,
}


async def check_moved_once(
    storage: Storage, reservations: Reservations, answers: list[Reservation]
) -> None:
    """Every answer is the reservation moved, and Redis holds it so: once, at s2 and s3."""
    final = await reservations.get("r1")
    assert (final.state.value, final.lines) == ("HELD", MOVED)
    assert answers == [final] * len(answers)
    holds = await read_holds(storage, ["s1", "s2", "s3"])
    assert_reserved_is_held(holds)
    assert not in_one_state_problems(holds, {"r1": ["s2", "s3"]})
    assert await storage.open_sagas() == []
    rows = await storage.rows([("s1", "a"), ("s2", "a"), ("s3", "a")])
    assert [(r.on_hand, r.reserved) for r in rows] == [(10, 0), (10, 2), (10, 2)]


@pytest.mark.parametrize("step", list(MOVE_STEPS))
async def test_a_move_stalled_at_a_step_and_retried_meanwhile_moves_the_line_once(
    storage: Storage, reservations: Reservations, clock: ManualClock, step: str
) -> None:
    # given a reservation at s1 and s2, and a move of its line at s1 to s3 that stalls at
    # one of its steps (before that step reaches Redis)
    sweeper = await setup(storage, reservations, clock, "s3")
    assert (await reservations.reserve("r1", LINES, ttl_seconds=60)).ok
    stall = Stall(storage, step)
    polled = Seen(storage, "directory")  # a retry waiting on the first move polls it
    first = asyncio.ensure_future(reservations.move_line("r1", "m1", MOVE))
    await until(stall.reached.is_set)
    # when it is retried meanwhile, and recovery comes when it is due
    clock.advance(1000)
    retry = asyncio.ensure_future(reservations.move_line("r1", "m1", MOVE))
    await until(lambda: retry.done() or polled.answered >= 3)
    await recover_when_due(reservations, clock, sweeper)
    retried = made(await asyncio.wait_for(retry, LIVENESS))
    stall.go.set()
    answered = made(await asyncio.wait_for(first, LIVENESS))
    again = made(await reservations.move_line("r1", "m1", MOVE))
    # then every answer is the line moved, moved once (rolled back and moved again by the
    # retry when stalled before its line left s1; finished by recovery after)
    await check_moved_once(storage, reservations, [answered, retried, again])
    recovered = {
        action: reservations.metrics.registry.get_sample_value(
            "omnistock_sagas_recovered_total", {"action": action}
        )
        for action in ("moved", "move_rolled_back")
    }
    want = MOVE_STEPS[step]
    assert recovered == {a: (1.0 if a == want else None) for a in recovered}


@pytest.mark.parametrize("died_after", ["claim", "in", "out"])
async def test_a_move_whose_caller_died_midway_is_finished_or_rolled_back_and_lands_no_late_step(
    storage: Storage, reservations: Reservations, clock: ManualClock, died_after: str
) -> None:
    # given a move's steps made by hand up to one, as by a caller that then died
    sweeper = await setup(storage, reservations, clock, "s3")
    held = made(await reservations.reserve("r1", LINES, ttl_seconds=60))
    entry = await storage.directory("r1")
    assert entry is not None
    move, token, now = Move("s1", "a", 2, "s3"), uuid.uuid4().hex, clock.now_ms()
    recover_at = now + reservations.timing.saga_timeout_ms
    claimed = await storage.claim_move("r1", entry.generation, "m1", token, move, recover_at)
    assert claimed.reply is MoveClaim.NEW
    into = MoveIn(entry.fingerprint, held.expires_at, False, None, None)
    steps = [
        lambda: storage.move_in("r1", token, move, now, into),
        lambda: storage.move_out("r1", token, move, now),
    ]
    made_steps = {"claim": 0, "in": 1, "out": 2}[died_after]
    for step in steps[:made_steps]:
        assert (await step()).reply in (Reply.HELD, Reply.DONE)
    # when recovery's time comes
    clock.advance(reservations.timing.saga_timeout_ms + 1)
    await sweeper.sweep()
    # then the move is made once its line left s1, else rolled back: the line at s1
    moved = died_after == "out"
    final = await reservations.get("r1")
    assert (final.state.value, final.lines) == ("HELD", MOVED if moved else LINES)
    assert await storage.open_sagas() == []
    # and the dead caller's steps still on their way land nowhere
    rows = await storage.rows([("s1", "a"), ("s3", "a")])
    for step in steps[made_steps:]:
        assert (await step()).reply is Reply.CANCELLED
    assert await storage.rows([("s1", "a"), ("s3", "a")]) == rows
    holds = await read_holds(storage, ["s1", "s2", "s3"])
    assert_reserved_is_held(holds)
    assert not in_one_state_problems(holds, {"r1": [ln.location for ln in final.lines]})
    # and a rolled back move id is not spent: the move can be made with it
    again = made(await reservations.move_line("r1", "m1", MOVE))
    assert again.lines == MOVED
    await check_moved_once(storage, reservations, [again])
