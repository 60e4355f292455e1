"""The sweeper, which every server process runs: holds expire without any client action
(I7: within a second of their expiry), each once however many sweepers run, and a saga left
midway by a crash is finished by recovery as it was decided. After each, what Redis holds
keeps I1 and I2 (tests/invariants.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from engine.app import Omnistock
from engine.domain.clock import ManualClock
from engine.domain.model import EventKind, Line, StockEvent
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.storage import Storage
from engine.usecases.parts import COMMITTING
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, register, served, sweeper_of
from .grpc_helpers import Stubs, level, line, stock_up
from .invariants import assert_reserved_is_held, in_one_state_problems, read_holds
from .processes import eventually

HELD = pb.RESERVATION_STATE_HELD

# -- expiry (I7) ----------------------------------------------------------------------------


@ON_BOTH
async def test_expired_holds_are_released_within_a_second(channel: grpc.aio.Channel) -> None:
    # given a hold of 3 of 10 units that lives half a second
    stubs = Stubs(channel)
    await stock_up(stubs, {("s1", "a"): 10})
    resp = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 3)], ttl_seconds=0.5)
    )
    expires_at = resp.reservation.expires_at
    assert (await level(stubs, "s1", "a")).available == 7
    # when nobody does anything, and availability is read every 20 ms
    back_at = 0.0
    while time.time() * 1000 < expires_at + 3000:
        if (await level(stubs, "s1", "a")).available == 10:
            back_at = time.time() * 1000
            break
        await asyncio.sleep(0.02)
    # then the units are back within one second of the expiry
    assert back_at, "the hold was not released within 3 s of its expiry"
    lag = back_at - expires_at
    assert lag < 1000, f"available again {lag:.0f} ms after the expiry (bound: 1000 ms)"
    got = await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="r1"))
    assert got.state == pb.RESERVATION_STATE_EXPIRED


def expiries(*apps: Omnistock) -> float:
    return sum(
        app.metrics.registry.get_sample_value("omnistock_expiries_total") or 0.0 for app in apps
    )


@ON_BOTH
async def test_two_sweepers_expire_each_hold_exactly_once(
    server: Omnistock, channel: grpc.aio.Channel, redis_url: str
) -> None:
    # given two server processes on one Redis, and 200 holds of half a second over 20 rows
    stubs = Stubs(channel)
    locations = [f"s{i}" for i in range(4)]
    rows = [(loc, sku) for loc in locations for sku in ("a", "b", "c", "d", "e")]
    await stock_up(stubs, dict.fromkeys(rows, 100))
    async with served(redis_url) as (other, _):
        for start in range(0, 200, 50):
            answers = await asyncio.gather(
                *(
                    stubs.reservations.Reserve(
                        pb.ReserveRequest(
                            reservation_id=f"r{i}",
                            lines=[line(*rows[i % len(rows)], 1)],
                            ttl_seconds=0.5,
                        )
                    )
                    for i in range(start, start + 50)
                )
            )
            assert all(a.reservation.state == HELD for a in answers)
        # when both sweepers run past the expiry
        done = await eventually(lambda: expiries(server, other) >= 200, within=5)
        await asyncio.sleep(0.3)  # a few more sweeps of each, which must find nothing
        # then each hold expired exactly once, and nothing is reserved any more
        counted = (expiries(server), expiries(other))
        assert done and sum(counted) == 200, f"expiries counted by each server: {counted}"
        got = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=["a", "b", "c", "d", "e"], location_ids=locations)
        )
        assert {lv.reserved for lv in got.levels} == {0}
        assert len(got.levels) == len(rows)
    # and every part is EXPIRED, none HELD (I1)
    holds = await read_holds(server.storage, locations)
    assert_reserved_is_held(holds)
    assert {rid: set(by.values()) for rid, by in holds.states.items()} == {
        f"r{i}": {"EXPIRED"} for i in range(200)
    }


# -- recovery of a saga cut short by a crash ------------------------------------------------


class ProcessDied(Exception):
    """Stands for the death of the server process at the point where it is raised."""


def count_event(location: str, sku: str, qty: int, now: int) -> StockEvent:
    return StockEvent(f"c:{location}:{sku}", location, sku, EventKind.COUNT, qty, now - 10)


@ON_BOTH
async def test_a_commit_decided_before_a_crash_is_finished_by_recovery(
    storage: Storage,
    reservations: Reservations,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a reservation held at two stores, and a sweeper (of any server process)
    now = clock.now_ms()
    for loc in ("s1", "s2"):
        await storage.apply_events(loc, [count_event(loc, "a", 5, now)], now)
    await register(reservations, "s1", "s2")
    lines = [Line("s1", "a", 2), Line("s2", "a", 2)]
    assert (await reservations.reserve("r1", lines, ttl_seconds=60)).ok
    sweeper = await sweeper_of(storage, reservations, clock, "s1", "s2")

    # when a commit is decided (COMMITTING) and the process dies before committing any part;
    # the sweeper happens to pass between the recovery entry and the decision
    decide = storage.settle

    async def sweep_then_decide(rid: str, expected: str, new: str, **how: Any) -> bool:
        if new == COMMITTING:
            await sweeper.sweep()
        return await decide(rid, expected, new, **how)

    async def die(*args: Any, **kwargs: Any) -> list[Any]:
        raise ProcessDied

    monkeypatch.setattr(storage, "settle", sweep_then_decide)
    monkeypatch.setattr(storage, "commit_part", die)
    with pytest.raises(ProcessDied):
        await reservations.commit("r1")
    monkeypatch.undo()

    # then recovery, past the saga timeout, finishes the commit it finds decided
    for _ in range(3):
        clock.advance(reservations.timing.saga_timeout_ms + 1)
        await sweeper.sweep()
    got = await reservations.get("r1")
    rows = await storage.rows([("s1", "a"), ("s2", "a")])
    assert got.state.value == "COMMITTED"
    assert [(r.on_hand, r.reserved) for r in rows] == [(3, 0), (3, 0)], (
        "the reservation reads COMMITTED, but its parts were never committed: "
        f"{[(r.on_hand, r.reserved) for r in rows]}; recovery entries: "
        f"{await storage.sagas_due(clock.now_ms(), 10)}"
    )
    # and both parts are COMMITTED (I2), and nothing is held (I1)
    holds = await read_holds(storage, ["s1", "s2"])
    assert not in_one_state_problems(holds, {"r1": ["s1", "s2"]})
    assert holds.states["r1"] == {"s1": "COMMITTED", "s2": "COMMITTED"}
    assert_reserved_is_held(holds)
