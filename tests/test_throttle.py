"""Turns: heavy work shared fairly between principals, light work never waiting. Driven
with events a test sets, so every order below is decided, not timed."""

from __future__ import annotations

import asyncio

import pytest

from engine.domain.auth import Principal, Role, act_as
from engine.throttle import Turns

LIGHT = 10
HEAVY = LIGHT + 1


class Worker:
    """Heavy work of one principal: takes its turn, says so, and holds the turn until
    told to let it go."""

    def __init__(self, turns: Turns, who: str, started: list[str], label: str) -> None:
        self.go = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(turns, who, started, label))

    async def _run(self, turns: Turns, who: str, started: list[str], label: str) -> None:
        act_as(Principal(who, Role.INGEST))  # in this task's own context
        async with turns.take(HEAVY):
            started.append(label)
            await self.go.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_principal_with_many_heavy_calls_gets_no_more_turns_than_one_with_one() -> None:
    # given one slot, held by the first of five heavy calls of "abuser"
    turns, started = Turns(1, light=LIGHT), []
    abuser = [Worker(turns, "abuser", started, f"a{i}") for i in range(5)]
    await settle()
    # when "till" asks for a turn after all of them
    till = Worker(turns, "till", started, "t0")
    await settle()
    assert started == ["a0"]
    # then the slot goes to "till" as soon as it is free, before the abuser's other four
    abuser[0].go.set()
    await settle()
    assert started == ["a0", "t0"]
    till.go.set()
    for worker in abuser[1:]:
        worker.go.set()
    await asyncio.gather(*(w.task for w in [*abuser, till]))
    assert started == ["a0", "t0", "a1", "a2", "a3", "a4"]


async def test_waiting_principals_are_served_in_turn() -> None:
    turns, started = Turns(1, light=LIGHT), []
    first = Worker(turns, "x", started, "x0")
    await settle()
    workers = [first]
    for i in range(1, 3):  # each of x, y, z has more waiting than one
        for who in ("x", "y", "z"):
            workers.append(Worker(turns, who, started, f"{who}{i}"))
    await settle()
    for worker in workers:
        worker.go.set()
    await asyncio.gather(*(w.task for w in workers))
    assert started == ["x0", "y1", "z1", "x1", "y2", "z2", "x2"]


async def test_no_more_than_its_slots_run_and_light_work_never_waits() -> None:
    turns, started = Turns(2, light=LIGHT), []
    workers = [Worker(turns, f"p{i}", started, f"p{i}") for i in range(4)]
    await settle()
    assert len(started) == 2 and sum(turns.holding.values()) == 2
    # light work goes through while every slot is taken
    async with asyncio.timeout(1):
        async with turns.take(LIGHT):
            pass
    for worker in workers:
        worker.go.set()
    await asyncio.gather(*(w.task for w in workers))
    assert sorted(started) == ["p0", "p1", "p2", "p3"] and not turns.holding


@pytest.mark.parametrize("when", ["waiting", "granted"])
async def test_a_call_cancelled_while_it_waits_or_once_granted_leaves_no_slot_taken(
    when: str,
) -> None:
    turns, started = Turns(1, light=LIGHT), []
    async with turns.take(HEAVY):
        leaver = Worker(turns, "b", started, "b0")
        await settle()
        if when == "waiting":
            leaver.task.cancel()
            await asyncio.gather(leaver.task, return_exceptions=True)
    # leaving the turn handed the slot to a waiter still there, which had no time to run
    leaver.task.cancel()
    await asyncio.gather(leaver.task, return_exceptions=True)
    assert started == [] and not turns.holding
    # the slot is free: the next call gets it at once
    after = Worker(turns, "c", started, "c0")
    await settle()
    assert started == ["c0"]
    after.go.set()
    await after.task
    assert not turns.holding
