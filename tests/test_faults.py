"""Faults: the service or its store killed, frozen or stopped, and what must survive it.

Each test runs real processes on loopback: `python server.py` as a child (tests/processes.py)
or an in-process server, against the session's Redis-compatible server or a private one.
After every fault the invariants of the brief are checked on what Redis holds
(tests/invariants.py): I1 (reserved == the sum of HELD parts on the row) and I2 (a
reservation is held, or committed, at all of its locations or at none). The sweeper's
expiry (I7) and its recovery of sagas cut short: tests/test_sweeper.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from engine.app import Omnistock, create_server
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.connect import redis_client
from engine.store.embedded import EmbeddedRedis
from engine.store.storage import Storage

from .conftest import BUCKETS, HOUR_MS, ON_BOTH, settings_for
from .grpc_helpers import Stubs, level, line, stock_up
from .invariants import (
    all_or_nothing_problems,
    assert_all_or_nothing,
    assert_reserved_is_held,
    no_open_sagas,
    open_sagas,
    read_holds,
)
from .processes import (
    ServerProcess,
    connect,
    eventually,
    health_status,
    redis_pid,
    timed,
    wait_gone,
)

Row = tuple[str, str]  # (location, sku)
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
COMMITTED = pb.RESERVATION_STATE_COMMITTED
HELD = pb.RESERVATION_STATE_HELD


# -- helpers ------------------------------------------------------------------------------


def reserve_request(rid: str, lines: Sequence[pb.ReservationLine]) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=lines, ttl_seconds=600)


# -- the service killed mid-saga ------------------------------------------------------------

SAGA_LOCATIONS = ("s1", "s2", "s3", "s4")
SAGA_SKUS = ("a", "b", "c")


def cross_location_batch(
    rng: random.Random, prefix: str, n: int
) -> dict[str, list[pb.ReservationLine]]:
    """n reservations, each with lines at 2 or 3 locations (so each is a saga)."""
    batch = {}
    for i in range(n):
        lines = [
            line(loc, sku, rng.randint(1, 3))
            for loc in rng.sample(SAGA_LOCATIONS, rng.choice((2, 3)))
            for sku in rng.sample(SAGA_SKUS, rng.choice((1, 2)))
        ]
        batch[f"{prefix}-{i}"] = lines
    return batch


async def reserve_then_kill(
    service: ServerProcess,
    redis: aioredis.Redis,
    batch: dict[str, list[pb.ReservationLine]],
    answers: dict[str, pb.ReserveResponse | grpc.StatusCode],
) -> set[str]:
    """Sends every Reserve of the batch at once, SIGKILLs the service once a fifth has been
    answered, and returns the ids of the batch whose saga was open in Redis right after."""
    answered = 0

    async def one(stubs: Stubs, rid: str, lines: list[pb.ReservationLine]) -> None:
        nonlocal answered
        try:
            answers[rid] = await stubs.reservations.Reserve(reserve_request(rid, lines), timeout=10)
        except grpc.aio.AioRpcError as err:
            answers[rid] = err.code()
        finally:
            answered += 1

    async with connect(service.port) as stubs:
        tasks = [asyncio.create_task(one(stubs, rid, lines)) for rid, lines in batch.items()]
        await eventually(lambda: answered >= len(batch) // 5, within=10)
        await service.kill()
        open_at_kill = await open_sagas(redis)
        await asyncio.gather(*tasks)
    return open_at_kill & set(batch)


def locations_of(sent: dict[str, list[pb.ReservationLine]]) -> dict[str, set[str]]:
    return {rid: {ln.location_id for ln in lines} for rid, lines in sent.items()}


async def some_partly_held(
    storage: Storage, reservations: dict[str, list[pb.ReservationLine]]
) -> bool:
    holds = await read_holds(storage, SAGA_LOCATIONS, reservations)
    return bool(all_or_nothing_problems(holds, locations_of(reservations)))


@ON_BOTH
async def test_service_killed_mid_saga_leaves_no_stray_hold_after_restart(
    spawn: Callable[..., ServerProcess], redis: aioredis.Redis, redis_url: str, storage: Storage
) -> None:
    # given a service on the shared Redis with 12 units of 3 skus at 4 stores
    service = spawn(
        "--redis-url", redis_url,
        "--metrics-port", "0",
        "--saga-timeout-seconds", "1",
        "--sweep-interval-ms", "50",
        "--stock-buckets", str(BUCKETS),
    )  # fmt: skip
    await service.start()
    rows = {(loc, sku): 12 for loc in SAGA_LOCATIONS for sku in SAGA_SKUS}
    async with connect(service.port) as stubs:
        await stock_up(stubs, rows)

    # when it is SIGKILLed while 200 cross-location Reserves are in flight (far more demand
    # than stock, so sagas both complete and roll back); up to 4 times, until a kill leaves a
    # saga open in Redis, preferably one held at some of its locations and not the others
    rng = random.Random(20240611)
    sent: dict[str, list[pb.ReservationLine]] = {}
    answers: dict[str, pb.ReserveResponse | grpc.StatusCode] = {}
    open_at_kill: set[str] = set()
    for attempt in range(4):
        if attempt:
            await service.start()
        batch = cross_location_batch(rng, f"k{attempt}", 200)
        sent.update(batch)
        open_now = await reserve_then_kill(service, redis, batch, answers)
        open_at_kill |= open_now
        if await some_partly_held(storage, {rid: batch[rid] for rid in open_now}):
            break
    assert open_at_kill, "4 kills, and never one while a saga was open"

    # then, restarted, the service recovers every open saga past the saga timeout (1 s)
    await service.start()
    settled = await eventually(lambda: no_open_sagas(redis), within=10)
    assert settled, f"sagas still open: {await open_sagas(redis)}"
    holds = await read_holds(storage, SAGA_LOCATIONS)
    assert_all_or_nothing(holds, locations_of(sent))
    assert_reserved_is_held(holds)
    assert set(holds.rows) == set(rows)
    # and every answered Reserve still means what it said
    for rid, answer in answers.items():
        if isinstance(answer, pb.ReserveResponse):
            at = {loc: holds.state(rid, loc) for loc in locations_of(sent)[rid]}
            expected = "HELD" if answer.HasField("reservation") else None
            held = {state if state == "HELD" else None for state in at.values()}
            assert held == {expected}, f"{rid} answered held={expected is not None}, now {at}"


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


# -- Redis killed under load ------------------------------------------------------------------

LOAD_LOCATIONS = ("s1", "s2", "s3")
LOAD_SKUS = ("a", "b", "c", "d")
LOAD_ON_HAND = 100_000


@dataclass
class Load:
    sent: dict[str, list[pb.ReservationLine]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # Reserve answered with a hold
    committed: set[str] = field(default_factory=set)  # Commit answered OK
    errors: list[grpc.StatusCode] = field(default_factory=list)


def some_lines(rng: random.Random) -> list[pb.ReservationLine]:
    """One location mostly, two now and then (a saga)."""
    locations = rng.sample(LOAD_LOCATIONS, 2 if rng.random() < 0.2 else 1)
    return [
        line(loc, sku, rng.randint(1, 3))
        for loc in locations
        for sku in rng.sample(LOAD_SKUS, rng.randint(1, 2))
    ]


async def reserve_commit_loop(stubs: Stubs, worker: int, load: Load) -> None:
    """Reserve, then commit (every fifth: release), until the first failed call."""
    rng = random.Random(worker)
    for i in itertools.count():
        rid, lines = f"w{worker}-{i}", some_lines(rng)
        load.sent[rid] = lines
        try:
            resp = await stubs.reservations.Reserve(reserve_request(rid, lines), timeout=5)
            if not resp.HasField("reservation"):
                continue
            load.held.add(rid)
            if i % 5 == 4:
                await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid), timeout=5)
                continue
            got = await stubs.reservations.Commit(pb.CommitRequest(reservation_id=rid), timeout=5)
            assert got.state == COMMITTED
            load.committed.add(rid)
        except grpc.aio.AioRpcError as err:
            load.errors.append(err.code())
            return


async def reservation_states(stubs: Stubs, ids: Iterable[str]) -> dict[str, int | None]:
    """GetReservation of each id: its state, or None when NOT_FOUND."""
    out: dict[str, int | None] = {}

    async def one(rid: str) -> None:
        try:
            got = await stubs.reservations.GetReservation(
                pb.GetReservationRequest(reservation_id=rid), timeout=5
            )
            out[rid] = got.state
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, (rid, err)
            out[rid] = None

    ids = list(ids)
    for start in range(0, len(ids), 100):
        await asyncio.gather(*(one(rid) for rid in ids[start : start + 100]))
    return out


def sold(load: Load, states: dict[str, int | None]) -> Counter[Row]:
    units: Counter[Row] = Counter()
    for rid, lines in load.sent.items():
        if states[rid] == COMMITTED:
            for ln in lines:
                units[(ln.location_id, ln.sku)] += ln.qty
    return units


async def test_redis_killed_under_load_loses_no_acknowledged_commit(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The embedded store runs with appendfsync always: Redis writes and fsyncs each change
    to its append-only file before it sends the reply, so a crash of the Redis process
    (SIGKILL here) loses nothing acknowledged. (With everysec, the default, it normally
    writes before replying too, but while an earlier fsync is still running it may postpone
    the write by up to 2 s and reply anyway: on a busy disk, as in CI beside other suites,
    this test then once lost commits it should not have. README: "The embedded store".)
    Unacknowledged calls may or may not have landed: GetReservation says which.
    """
    # given a service with its embedded store, and ample stock at 3 stores
    state = tmp_path / "state"
    service = spawn(
        "--state-dir", str(state),
        "--appendfsync", "always",
        "--metrics-port", "0",
        "--saga-timeout-seconds", "1",
        "--sweep-interval-ms", "50",
        "--stock-buckets", str(BUCKETS),
    )  # fmt: skip
    await service.start()
    rows = [(loc, sku) for loc in LOAD_LOCATIONS for sku in LOAD_SKUS]
    load = Load()
    async with connect(service.port) as stubs:
        await stock_up(stubs, dict.fromkeys(rows, LOAD_ON_HAND))
        # when 6 clients reserve and commit, and the store is SIGKILLed mid-load
        workers = [asyncio.create_task(reserve_commit_loop(stubs, w, load)) for w in range(6)]
        await eventually(lambda: len(load.committed) >= 150, within=15)
        os.kill(redis_pid(state), signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*workers), timeout=15)
    assert len(load.committed) >= 150, f"only {len(load.committed)} commits before the kill"
    assert load.errors and set(load.errors) == {UNAVAILABLE}, Counter(load.errors)

    # and the service is stopped and started again on the same state directory
    await service.stop(grace=5.0)
    await service.start()
    store = redis_client((state / "redis.url").read_text().strip(), 2.0)
    try:
        await check_after_redis_crash(service, store, load, rows)
    finally:
        await store.aclose()


async def check_after_redis_crash(
    service: ServerProcess, store: aioredis.Redis, load: Load, rows: list[Row]
) -> None:
    settled = await eventually(lambda: no_open_sagas(store), within=10)
    assert settled, f"sagas still open: {await open_sagas(store)}"
    async with connect(service.port) as stubs:
        states = await reservation_states(stubs, load.sent)
        got = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=list(LOAD_SKUS), location_ids=list(LOAD_LOCATIONS))
        )
    # then every acknowledged commit is COMMITTED, every acknowledged hold is still known
    lost = sorted(rid for rid in load.committed if states[rid] != COMMITTED)
    assert not lost, f"{len(lost)} acknowledged commits lost: {lost[:10]}"
    forgotten = sorted(rid for rid in load.held if states[rid] is None)
    assert not forgotten, f"{len(forgotten)} acknowledged holds forgotten: {forgotten[:10]}"
    # and on_hand is the initial count less what the COMMITTED reservations sold
    units = sold(load, states)
    on_hand = {(lv.location_id, lv.sku): lv.on_hand for lv in got.levels}
    expected = {row: LOAD_ON_HAND - units[row] for row in rows}
    assert on_hand == expected
    # and reserved is the sum of the HELD parts (I1), each reservation all or nothing (I2)
    storage = Storage(store, stock_buckets=BUCKETS, retention_ms=HOUR_MS, event_window_ms=HOUR_MS)
    holds = await read_holds(storage, LOAD_LOCATIONS)
    assert_reserved_is_held(holds)
    assert set(holds.rows) == set(rows)
    assert_all_or_nothing(holds, locations_of(load.sent))


# -- Redis away: fast UNAVAILABLE, then recovery ----------------------------------------------


async def stop_in_process(app: Omnistock) -> None:
    """Stops an in-process server, failing the test (not hanging the session) if it cannot."""
    try:
        await asyncio.wait_for(app.stop(grace=1.0), timeout=10)
    except TimeoutError:
        pytest.fail("Omnistock.stop() did not return within 10 s")


def kill_store(store: EmbeddedRedis) -> None:
    store.kill()
    # EmbeddedRedis.kill() leaves the dead process's stderr pipe open (stop() closes it); once
    # start() replaces the process, the pipe's garbage collection warns, an error here.
    if store.process is not None and store.process.stderr is not None:
        store.process.stderr.close()


async def test_calls_fail_unavailable_within_their_deadline_and_recover_when_redis_returns(
    tmp_path: Path,
) -> None:
    # given an in-process server on a private store (fixed port, own state dir), with stock
    store = EmbeddedRedis(tmp_path / "redis")
    await asyncio.to_thread(store.start)
    app = create_server(settings_for(store.url))
    try:
        await app.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs = Stubs(channel)
            await stock_up(stubs, {("s1", "a"): 10})
            await check_frozen_store_answers_before_the_deadline(stubs, store)
            await check_killed_store_fails_fast_then_recovers(stubs, store, app.port)
    finally:
        await stop_in_process(app)
        await asyncio.to_thread(store.stop)


def availability_request() -> pb.GetAvailabilityRequest:
    return pb.GetAvailabilityRequest(skus=["a"], location_ids=["s1"])


async def check_frozen_store_answers_before_the_deadline(
    stubs: Stubs, store: EmbeddedRedis
) -> None:
    # when the store is frozen (SIGSTOP: connections open, no answers)
    assert store.process is not None
    os.kill(store.process.pid, signal.SIGSTOP)
    try:
        code, took = await timed(
            stubs.availability.GetAvailability(availability_request(), timeout=1.0)
        )
    finally:
        os.kill(store.process.pid, signal.SIGCONT)
    # then a call with a 1 s deadline is answered UNAVAILABLE while the caller still listens
    assert (code, took < 1.0) == (UNAVAILABLE, True), f"{code.name} after {took:.3f}s"
    # and once it thaws, calls are answered again
    thawed = await eventually(lambda: _answers(stubs), within=5)
    assert thawed, "no answer within 5 s after SIGCONT"


async def _answers(stubs: Stubs) -> bool:
    code, _ = await timed(stubs.availability.GetAvailability(availability_request(), timeout=1.0))
    return code == OK


async def check_killed_store_fails_fast_then_recovers(
    stubs: Stubs, store: EmbeddedRedis, port: int
) -> None:
    # when the store is killed
    kill_store(store)
    # then Reserve and GetAvailability (1 s deadlines) fail UNAVAILABLE fast, not at the deadline
    reserve = stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r-down", lines=[line("s1", "a", 1)]), timeout=1.0
    )
    for call in (reserve, stubs.availability.GetAvailability(availability_request(), timeout=1.0)):
        code, took = await timed(call)
        assert (code, took < 0.5) == (UNAVAILABLE, True), f"{code.name} after {took:.3f}s"
    # and health turns NOT_SERVING (the server's probe pings the store every 0.25 s)
    assert await eventually(lambda: _health_is(port, NOT_SERVING), within=3)

    # when the same store comes back (same port and state dir: the data is read from the AOF)
    await asyncio.to_thread(store.start)
    # then, without a restart of the gRPC server, calls succeed again and see the old stock
    back = await eventually(lambda: _answers(stubs), within=5)
    assert back, "no answer within 5 s after the store returned"
    row = await level(stubs, "s1", "a")
    assert (row.on_hand, row.reserved) == (10, 0)
    held = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r-up", lines=[line("s1", "a", 1)]), timeout=2.0
    )
    assert held.reservation.state == HELD
    # and health is SERVING again
    assert await eventually(lambda: _health_is(port, SERVING), within=3)


async def _health_is(port: int, status: int) -> bool:
    return await health_status(port) == status


# -- SIGTERM ------------------------------------------------------------------------------------


async def test_sigterm_drains_and_stops_the_embedded_store(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # given a service with its embedded store and a hold
    state = tmp_path / "state"
    service = spawn("--state-dir", str(state), "--metrics-port", "0")
    await service.start()
    store_pid = redis_pid(state)
    async with connect(service.port) as stubs:
        await stock_up(stubs, {("s1", "a"): 10})
        before = await stubs.reservations.Reserve(reserve_request("r-before", [line("s1", "a", 2)]))
        assert before.reservation.state == HELD
        # and a call in flight: the store is frozen for a moment, so the call waits on it
        os.kill(store_pid, signal.SIGSTOP)
        try:
            in_flight = asyncio.ensure_future(
                stubs.reservations.Reserve(
                    reserve_request("r-draining", [line("s1", "a", 3)]), timeout=5
                )
            )
            await asyncio.sleep(0.3)
            # when the service gets SIGTERM (and the store thaws a little later)
            service.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
        finally:
            os.kill(store_pid, signal.SIGCONT)
        # then the call in flight is answered (drained, not cut off)
        draining = await in_flight
        assert draining.reservation.state == HELD
    # and the service exits 0 within a few seconds, and its store is gone too
    assert await service.wait(within=5) == 0, service.log_tail()
    assert await wait_gone(store_pid, within=2), f"embedded store {store_pid} still running"

    # when it starts again on the same state directory
    await service.start()
    # then it serves the same data
    async with connect(service.port) as stubs:
        for rid in ("r-before", "r-draining"):
            got = await stubs.reservations.GetReservation(
                pb.GetReservationRequest(reservation_id=rid)
            )
            assert got.state == HELD, rid
        row = await level(stubs, "s1", "a")
        assert (row.on_hand, row.reserved, row.available) == (10, 5, 5)
