"""Concurrency over real gRPC: many clients at once against one real server and one real
Redis-compatible store; then the invariants, checked from the answers and from Redis itself.

I1 a row's reserved equals the sum of the HELD lines on it (read from the reservation parts
   in Redis: tests/invariants.py); I2 a reservation is applied at all its locations or at none;
I3 no oversell; I4 the same Reserve, Commit or Release twice has one effect.

The workloads are seeded, but how the calls interleave is up to the machine: a race a test
looks for shows up in some of its attempts, so the racing tests make many attempts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from engine.app import Omnistock
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import SAGAS, WAKES

from .conftest import ON_BOTH, all_keys
from .grpc_helpers import Stubs, count, level, line, stock_up
from .invariants import (
    Holds,
    arithmetic_problems,
    assert_reserved_is_held,
    assert_served_rows_match_holds,
    in_one_state_problems,
    read_holds,
    reserved_problems,
    served_levels,
)

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster
CALL_TIMEOUT = 30.0  # seconds: a hung call fails its test long before the 120 s limit
LONG_TTL = 600.0  # no hold may expire while a test runs


# -- clients ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def clients(server: Omnistock, n: int) -> AsyncIterator[list[Stubs]]:
    """n independent clients, each its own channel on its own TCP connection. (Without a
    local subchannel pool, gRPC would carry every channel to one target on one connection.)"""
    target = f"127.0.0.1:{server.port}"
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(target, options=options))
            for _ in range(n)
        ]
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        yield [Stubs(ch) for ch in channels]


async def outcome(call: Awaitable[Any]) -> Any:
    """The answer, or the status code the call ended with."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        return err.code()


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def reserve(rid: str, *lines: pb.ReservationLine, ttl: float = LONG_TTL) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=list(lines), ttl_seconds=ttl)


def delta(event_id: str, loc: str, sku: str, qty: int) -> pb.StockEvent:
    return pb.StockEvent(
        event_id=event_id,
        location_id=loc,
        sku=sku,
        kind=pb.EVENT_KIND_DELTA,
        qty=qty,
        source_time=int(time.time() * 1000),
    )


async def get(stubs: Stubs, rid: str) -> pb.Reservation | grpc.StatusCode:
    return await outcome(
        stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id=rid))
    )


STATE_AFTER = {
    "commit": pb.RESERVATION_STATE_COMMITTED,
    "release": pb.RESERVATION_STATE_RELEASED,
    "extend": pb.RESERVATION_STATE_HELD,
}
STATES = {
    "HELD": pb.RESERVATION_STATE_HELD,
    "COMMITTED": pb.RESERVATION_STATE_COMMITTED,
    "RELEASED": pb.RESERVATION_STATE_RELEASED,
    "EXPIRED": pb.RESERVATION_STATE_EXPIRED,
}


def name_of(answer: Any) -> str:
    """A short name for an answer or status code, for failure messages."""
    if isinstance(answer, grpc.StatusCode):
        return answer.name
    if isinstance(answer, pb.ReserveResponse):
        if answer.HasField("reservation"):
            return pb.ReservationState.Name(answer.reservation.state)
        return "SHORT"
    return str(pb.ReservationState.Name(answer.state))


def send(stubs: Stubs, call: str, rid: str) -> Awaitable[Any]:
    """Commit, Release or Extend (to 900 s) of one reservation."""
    r = stubs.reservations
    if call == "commit":
        return r.Commit(pb.CommitRequest(reservation_id=rid), timeout=CALL_TIMEOUT)
    if call == "release":
        return r.Release(pb.ReleaseRequest(reservation_id=rid), timeout=CALL_TIMEOUT)
    return r.Extend(pb.ExtendRequest(reservation_id=rid, ttl_seconds=900), timeout=CALL_TIMEOUT)


# -- what Redis holds ---------------------------------------------------------------------


async def dump(redis: aioredis.Redis) -> dict[bytes, bytes]:
    """Every key's value, except the sagas index and the sweep's wake-up index: a
    cross-location Reserve (re)schedules its id there before it learns the id is taken, and
    a hold wakes its location's sweep whatever its answer; both find nothing to do later."""
    indexes = {key.encode() for key in (*SAGAS, *WAKES)}
    keys = [k for k in await all_keys(redis) if k not in indexes]
    return {key: await redis.dump(key) for key in keys}


def quantities(level: pb.StockLevel) -> tuple[int, int, int]:
    return level.on_hand, level.reserved, level.available


def unmoved(stored: dict[bytes, bytes], locations: list[str]) -> dict[bytes, bytes]:
    """The keys of every location but these (a location's keys carry its hash tag)."""
    tags = tuple(f"{{{loc}}}".encode() for loc in locations)
    return {k: v for k, v in stored.items() if not k.startswith(tags)}


# -- 1. the flash sale ------------------------------------------------------------------


async def test_flash_sale_sells_exactly_the_stock(server: Omnistock) -> None:
    # given 100 units of one sku at one store, and 1,000 shoppers on 50 clients
    async with clients(server, 50) as crowd:
        await stock_up(crowd[0], {("s1", "hot"): 100})
        requests = [reserve(f"sale-{i:04d}", line("s1", "hot", 1)) for i in range(1000)]

        # when every shopper reserves one unit at the same moment
        answers = await asyncio.gather(
            *(
                outcome(crowd[i % len(crowd)].reservations.Reserve(req, timeout=CALL_TIMEOUT))
                for i, req in enumerate(requests)
            )
        )

        # then every call was answered (no error status) ...
        errors = Counter(a for a in answers if isinstance(a, grpc.StatusCode))
        assert not errors, f"calls failed: {errors}"
        winners = [a for a in answers if a.HasField("reservation")]
        losers = [a for a in answers if not a.HasField("reservation")]
        # ... exactly 100 hold a unit, each under its own id, and every other one was told
        # what fell short
        assert len(winners) == 100
        for req, a in zip(requests, answers, strict=True):
            if a.HasField("reservation"):
                assert a.reservation.reservation_id == req.reservation_id
                assert a.reservation.state == pb.RESERVATION_STATE_HELD
        for a in losers:
            assert [(s.location_id, s.sku, s.requested, s.available) for s in a.shortfalls] == [
                ("s1", "hot", 1, 0)
            ]
        row = await level(crowd[0], "s1", "hot")
        assert (row.on_hand, row.reserved, row.available) == (100, 100, 0)

    # and I1 holds in Redis: one HELD part per winner, none for a loser
    holds = await read_holds(server.storage, ["s1"])
    assert holds.held_ids("s1") == {a.reservation.reservation_id for a in winners}
    assert set(holds.states) == holds.held_ids("s1")
    assert holds.held[("s1", "hot")] == row.reserved == 100
    assert_reserved_is_held(holds)


# -- 2. the same Reserve, retried at once -----------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([line("s1", "a", 3)], id="one-location"),
        pytest.param([line("s1", "a", 3), line("s2", "b", 2)], id="cross-location"),
    ],
)
async def test_same_reserve_retried_concurrently_holds_once(
    server: Omnistock, lines: list[pb.ReservationLine]
) -> None:
    # given stock at two stores, and one Reserve that a flaky client sends 10 times at once
    async with clients(server, 10) as tills:
        await stock_up(tills[0], {("s1", "a"): 10, ("s2", "b"): 10})
        request = reserve("cart-1", *lines)

        # when all 10 copies arrive together (for the cross-location one, the first opens a
        # saga and the other 9 wait for it to settle, then answer as it did)
        answers = await asyncio.gather(
            *(outcome(t.reservations.Reserve(request, timeout=CALL_TIMEOUT)) for t in tills)
        )

        # then all 10 answer the same HELD reservation ...
        assert all(isinstance(a, pb.ReserveResponse) for a in answers), answers
        first = answers[0].reservation
        assert first.state == pb.RESERVATION_STATE_HELD
        assert first.reservation_id == "cart-1"
        assert all(a.reservation == first for a in answers), answers
        # ... and the units are held once
        wanted = {(ln.location_id, ln.sku): ln.qty for ln in lines}
        rows = await assert_served_rows_match_holds(
            tills[0], server.storage, ["s1", "s2"], ["a", "b"]
        )
        for key, row in rows.items():
            assert row.reserved == wanted.get(key, 0), key
    holds = await read_holds(server.storage, ["s1", "s2"])
    assert holds.states == {"cart-1": {ln.location_id: "HELD" for ln in lines}}


# -- 3. an id reused with other lines ---------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([line("s1", "a", 2)], id="one-location"),
        pytest.param([line("s1", "a", 2), line("s2", "b", 1)], id="cross-location"),
    ],
)
async def test_reused_id_with_other_lines_is_already_exists(
    server: Omnistock, redis: aioredis.Redis, lines: list[pb.ReservationLine]
) -> None:
    # given a reservation held
    async with clients(server, 1) as (till,):
        await stock_up(till, {("s1", "a"): 10, ("s2", "b"): 10, ("s3", "a"): 10})
        held = await till.reservations.Reserve(reserve("r1", *lines))
        assert held.reservation.state == pb.RESERVATION_STATE_HELD
        before = await served_levels(till, ["s1", "s2", "s3"], ["a", "b"])
        stored = await dump(redis)
        reused = [
            [line("s1", "a", 3)],  # same sku and store, another qty
            [line("s3", "a", 2)],  # same sku and qty, another store
            [line("s1", "a", 2), line("s3", "a", 1)],  # another cross-location set
            [*lines, line("s2", "c", 1)],  # one line more
        ]

        # when the id is reused with other lines (one after another, then all at once)
        one_by_one = [
            await status_of(till.reservations.Reserve(reserve("r1", *ln))) for ln in reused
        ]
        at_once = await asyncio.gather(
            *(status_of(till.reservations.Reserve(reserve("r1", *ln))) for ln in reused)
        )

        # then every attempt is ALREADY_EXISTS, and nothing changed (on a cluster, the
        # hold of a one-location attempt, sent beside its refused directory entry, held at
        # s3 and let go: the rows there read the same, at later versions)
        assert one_by_one == at_once == [grpc.StatusCode.ALREADY_EXISTS] * len(reused)
        after = await served_levels(till, ["s1", "s2", "s3"], ["a", "b"])
        moved = ["s3"] if server.storage.cluster else []
        assert {k: v for k, v in after.items() if k[0] not in moved} == {
            k: v for k, v in before.items() if k[0] not in moved
        }
        assert {k: quantities(v) for k, v in after.items()} == {
            k: quantities(v) for k, v in before.items()
        }
        assert unmoved(await dump(redis), moved) == unmoved(stored, moved)
        assert (await get(till, "r1")) == held.reservation
        await assert_served_rows_match_holds(till, server.storage, ["s1", "s2", "s3"], ["a", "b"])
    holds = await read_holds(server.storage, ["s1", "s2", "s3"])
    assert holds.states == {"r1": {ln.location_id: "HELD" for ln in lines}}


# -- 4. commit and release, twice -------------------------------------------------------


async def test_commit_and_release_twice_are_harmless(server: Omnistock) -> None:
    async with clients(server, 1) as (till,):
        await stock_up(till, {("s1", "a"): 10, ("s2", "b"): 10})
        for shape in ("one", "cross"):
            lines = [line("s1", "a", 2)] + ([line("s2", "b", 3)] if shape == "cross" else [])
            await _commit_twice(till, f"sold-{shape}", lines)
            await _release_twice(till, f"void-{shape}", lines)
        await assert_served_rows_match_holds(till, server.storage, ["s1", "s2"], ["a", "b"])


async def _rows(till: Stubs) -> dict[tuple[str, str], tuple[int, int]]:
    got = await served_levels(till, ["s1", "s2"], ["a", "b"])
    return {key: (row.on_hand, row.reserved) for key, row in got.items()}


async def _commit_twice(till: Stubs, rid: str, lines: list[pb.ReservationLine]) -> None:
    # given a held reservation
    start = await _rows(till)
    await till.reservations.Reserve(reserve(rid, *lines))
    # when it is committed twice
    first = await till.reservations.Commit(pb.CommitRequest(reservation_id=rid))
    second = await till.reservations.Commit(pb.CommitRequest(reservation_id=rid))
    # then both answer COMMITTED, and on_hand and reserved dropped once
    assert first.state == second.state == pb.RESERVATION_STATE_COMMITTED, rid
    sold = await _rows(till)
    for ln in lines:
        key = (ln.location_id, ln.sku)
        assert sold[key] == (start[key][0] - ln.qty, start[key][1]), (rid, key)
    # and a release after the commit is refused and changes nothing
    refused = await status_of(till.reservations.Release(pb.ReleaseRequest(reservation_id=rid)))
    assert refused == grpc.StatusCode.FAILED_PRECONDITION, rid
    assert await _rows(till) == sold
    assert (await get(till, rid)).state == pb.RESERVATION_STATE_COMMITTED


async def _release_twice(till: Stubs, rid: str, lines: list[pb.ReservationLine]) -> None:
    # given a held reservation
    start = await _rows(till)
    await till.reservations.Reserve(reserve(rid, *lines))
    # when it is released twice
    first = await till.reservations.Release(pb.ReleaseRequest(reservation_id=rid))
    second = await till.reservations.Release(pb.ReleaseRequest(reservation_id=rid))
    # then both answer RELEASED, and reserved is back where it was, once
    assert first.state == second.state == pb.RESERVATION_STATE_RELEASED, rid
    assert await _rows(till) == start, rid
    # and a commit after the release is refused and changes nothing
    refused = await status_of(till.reservations.Commit(pb.CommitRequest(reservation_id=rid)))
    assert refused == grpc.StatusCode.FAILED_PRECONDITION, rid
    assert await _rows(till) == start, rid
    assert (await get(till, rid)).state == pb.RESERVATION_STATE_RELEASED


# -- 4b. commit racing release, across locations ----------------------------------------


async def test_commit_racing_release_across_locations_settles_one_way_everywhere(
    server: Omnistock,
) -> None:
    # given 100 baskets held at two stores each
    n = 100
    async with clients(server, 8) as tills:
        await stock_up(tills[0], {("s1", "a"): 1000, ("s2", "b"): 1000})
        ids = [f"basket-{i:03d}" for i in range(n)]
        await asyncio.gather(
            *(
                tills[i % 8].reservations.Reserve(
                    reserve(rid, line("s1", "a", 1), line("s2", "b", 1))
                )
                for i, rid in enumerate(ids)
            )
        )

        # when each is committed (the sale) and released (the void) at the same moment,
        # from two clients
        async def race(i: int, rid: str) -> tuple[Any, Any]:
            commit = send(tills[i % 8], "commit", rid)
            release = send(tills[(i + 1) % 8], "release", rid)
            return await asyncio.gather(outcome(commit), outcome(release))

        answers = await asyncio.gather(*(race(i, rid) for i, rid in enumerate(ids)))

        # then exactly one call of each pair won, and the reservation went its way at both
        # stores: GetReservation, the parts in Redis and a retry of the winner all agree
        holds = await read_holds(server.storage, ["s1", "s2"])
        problems, sold = [], 0
        for rid, (committed, released) in zip(ids, answers, strict=True):
            won = [a.state for a in (committed, released) if isinstance(a, pb.Reservation)]
            states = sorted({str(holds.state(rid, loc)) for loc in ("s1", "s2")})
            seen = await get(tills[0], rid)
            said = name_of(seen)
            retry = await outcome(
                send(
                    tills[1],
                    "commit" if won == [pb.RESERVATION_STATE_COMMITTED] else "release",
                    rid,
                )
            )
            story = (
                f"{rid}: commit {name_of(committed)}, release {name_of(released)}; parts {states}; "
                f"GetReservation {said}; retrying the winner {name_of(retry)}"
            )
            if won == [pb.RESERVATION_STATE_COMMITTED]:
                sold += 1
                good = states == ["COMMITTED"] and said == "RESERVATION_STATE_COMMITTED"
            elif won == [pb.RESERVATION_STATE_RELEASED]:
                good = states == ["RELEASED"] and said == "RESERVATION_STATE_RELEASED"
            else:
                good = False
            if not good or not isinstance(retry, pb.Reservation) or retry.state not in won:
                problems.append(story)
        rows = await assert_served_rows_match_holds(
            tills[0], server.storage, ["s1", "s2"], ["a", "b"]
        )
        assert not problems, f"{len(problems)} of {n} races went wrong:\n" + "\n".join(problems)
        assert (rows[("s1", "a")].on_hand, rows[("s2", "b")].on_hand) == (1000 - sold, 1000 - sold)
        assert (rows[("s1", "a")].reserved, rows[("s2", "b")].reserved) == (0, 0)


# -- 5. a cross-location reservation short at one location ------------------------------


async def test_cross_location_reservation_short_at_one_location_holds_nothing_anywhere(
    server: Omnistock,
) -> None:
    # given 5 of a at s1, but only 3 of b at s2
    async with clients(server, 1) as (till,):
        await stock_up(till, {("s1", "a"): 5, ("s2", "b"): 3})
        lines = [line("s1", "a", 2), line("s2", "b", 5)]

        # when a basket wants 2 of a at s1 and 5 of b at s2
        resp = await till.reservations.Reserve(reserve("basket", *lines))

        # then the answer names the short line, and nothing is held at either store
        assert not resp.HasField("reservation")
        short = [(s.location_id, s.sku, s.requested, s.available) for s in resp.shortfalls]
        assert short == [("s2", "b", 5, 3)]
        rows = await assert_served_rows_match_holds(till, server.storage, ["s1", "s2"], ["a", "b"])
        assert (rows[("s1", "a")].reserved, rows[("s2", "b")].reserved) == (0, 0)
        assert (rows[("s1", "a")].available, rows[("s2", "b")].available) == (5, 3)
        # and the id is not remembered
        assert await get(till, "basket") == grpc.StatusCode.NOT_FOUND

        # when s2 is restocked and the same basket is tried again
        restock = count("restock", "s2", "b", 8, int(time.time() * 1000))
        await till.stock.ApplyEvents(pb.ApplyEventsRequest(events=[restock]))
        try:
            retried = await till.reservations.Reserve(reserve("basket", *lines))
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"the retry after restocking failed: {err.code()} {err.details()}")

        # then it holds, at both stores
        assert retried.reservation.state == pb.RESERVATION_STATE_HELD, retried
        rows = await assert_served_rows_match_holds(till, server.storage, ["s1", "s2"], ["a", "b"])
        assert (rows[("s1", "a")].reserved, rows[("s2", "b")].reserved) == (2, 5)
        assert (await get(till, "basket")).state == pb.RESERVATION_STATE_HELD


# -- 6. mixed traffic -------------------------------------------------------------------

LOCATIONS = ("m1", "m2", "m3")
SKUS = ("a", "b", "c")
# What happens to a reservation once held: calls joined by + run one after the other,
# calls joined by | run at the same time (a retry racing the original, a void racing a sale).
FOLLOW_UPS = (
    "keep",
    "commit",
    "release",
    "extend",
    "extend+commit",
    "commit|commit",
    "commit|release",
    "release|release",
    "extend|release",
    "extend|commit",
)


@dataclass
class Scenario:
    rid: str
    lines: list[pb.ReservationLine]
    copies: int  # identical Reserve calls sent at once
    follow_up: str
    answers: list[tuple[str, Any]] = field(default_factory=list)  # (call, answer or code)

    @property
    def held(self) -> bool:
        """Some copy of the Reserve answered HELD. (Copies may differ: one can find the row
        short and answer so, leaving no trace, and a later one find stock freed meanwhile.)"""
        return any(
            isinstance(a, pb.ReserveResponse) and a.HasField("reservation")
            for c, a in self.answers
            if c == "reserve"
        )

    def __str__(self) -> str:
        where = ",".join(f"{ln.location_id}/{ln.sku}x{ln.qty}" for ln in self.lines)
        said = ", ".join(f"{call}:{name_of(a)}" for call, a in self.answers)
        return f"{self.rid} [{where}] {self.follow_up}: {said}"


def scenarios(rng: random.Random, n: int) -> list[Scenario]:
    out = []
    for i in range(n):
        if rng.random() < 0.45:
            locations = rng.sample(LOCATIONS, 2)
            lines = [line(loc, rng.choice(SKUS), rng.randint(1, 3)) for loc in locations]
        else:
            loc = rng.choice(LOCATIONS)
            skus = rng.sample(SKUS, rng.randint(1, 2))
            lines = [line(loc, sku, rng.randint(1, 3)) for sku in skus]
        copies = 2 if rng.random() < 0.15 else 1
        out.append(Scenario(f"mix-{i:03d}", lines, copies, rng.choice(FOLLOW_UPS)))
    return out


async def play(s: Scenario, pick: Callable[[], Stubs]) -> None:
    """One reservation's life: reserve (maybe twice at once), then its follow-up calls."""
    request = reserve(s.rid, *s.lines)
    got = await asyncio.gather(
        *(
            outcome(pick().reservations.Reserve(request, timeout=CALL_TIMEOUT))
            for _ in range(s.copies)
        )
    )
    s.answers += [("reserve", a) for a in got]
    if not s.held:
        return
    for step in s.follow_up.split("+"):
        calls = [c for c in step.split("|") if c != "keep"]
        done = await asyncio.gather(*(outcome(send(pick(), c, s.rid)) for c in calls))
        s.answers += list(zip(calls, done, strict=True))


def stock_events(rng: random.Random, n: int) -> list[pb.ApplyEventsRequest]:
    """Store systems' batches: fresh counts and small deltas on the rows under traffic."""
    now = int(time.time() * 1000)
    batches = []
    for b in range(n):
        events = []
        for j in range(rng.randint(1, 3)):
            loc, sku, eid = rng.choice(LOCATIONS), rng.choice(SKUS), f"ev-{b}-{j}"
            if rng.random() < 0.4:
                events.append(count(eid, loc, sku, rng.randint(8, 30), now - rng.randint(0, 50)))
            else:
                events.append(delta(eid, loc, sku, rng.choice((-2, -1, 1, 2, 3))))
        batches.append(pb.ApplyEventsRequest(events=events))
    return batches


async def test_concurrent_mixed_traffic_keeps_reserved_equal_to_held_parts(
    server: Omnistock,
) -> None:
    # given 9 rows at 3 stores, two of them with safety stock, and 8 clients
    rng = random.Random(20240611)
    async with clients(server, 8) as crowd:
        await stock_up(crowd[0], {(loc, sku): 20 for loc in LOCATIONS for sku in SKUS})
        safety = [("m1", "a", 2), ("m2", "b", 3)]
        await crowd[0].stock.SetSafetyStock(
            pb.SetSafetyStockRequest(
                entries=[pb.SafetyStockEntry(location_id=loc, sku=k, qty=q) for loc, k, q in safety]
            )
        )
        plays, batches = scenarios(rng, 130), stock_events(rng, 40)

        # when reserves (one and two locations, some sent twice at once), commits, releases,
        # extends (some racing each other on one id) and stock events all run at once
        spread = random.Random(7)

        def pick() -> Stubs:
            return spread.choice(crowd)

        ingest = [
            outcome(pick().stock.ApplyEvents(batch, timeout=CALL_TIMEOUT)) for batch in batches
        ]
        results = await asyncio.gather(*(play(s, pick) for s in plays), *ingest)
        events = results[len(plays) :]

        # then every call was answered as the protocol allows, no reservation is applied at
        # some of its locations only (I2), what GetReservation says agrees with the parts,
        # and on every row reserved is the sum of its HELD lines (I1)
        assert all(isinstance(r, pb.ApplyEventsResponse) for r in events), events
        holds = await read_holds(server.storage, LOCATIONS)
        problems = []
        for s in plays:
            problems += _answer_problems(s)
            problems += await _all_or_nothing_problems(s, holds, crowd[0])
        levels = await served_levels(crowd[0], LOCATIONS, SKUS)
        served = {row: level.reserved for row, level in levels.items()}
        problems += reserved_problems(holds, served) + arithmetic_problems(levels)
        assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
    assert sum(len(s.answers) for s in plays) + len(events) >= 250


def _answer_problems(s: Scenario) -> list[str]:
    """Reserve: an answer (HELD or short), the same for every copy. Commit, Release, Extend:
    OK with the state they lead to, or FAILED_PRECONDITION (another call got there first)."""
    out = []
    reserves = [a for c, a in s.answers if c == "reserve"]
    if not all(isinstance(a, pb.ReserveResponse) for a in reserves):
        out.append(f"reserve failed: {s}")
    elif len({bytes(a.SerializeToString()) for a in reserves if a.HasField("reservation")}) > 1:
        out.append(f"copies of one reserve held different reservations: {s}")
    for call, answer in s.answers[s.copies :]:
        if isinstance(answer, pb.Reservation):
            if answer.state != STATE_AFTER[call]:
                out.append(f"{call} answered OK with state {name_of(answer)}: {s}")
        elif answer != grpc.StatusCode.FAILED_PRECONDITION:
            out.append(f"{call} answered {name_of(answer)}: {s}")
    return out


async def _all_or_nothing_problems(s: Scenario, holds: Holds, stubs: Stubs) -> list[str]:
    locations = {ln.location_id for ln in s.lines}
    states = {loc: holds.state(s.rid, loc) for loc in sorted(locations)}
    seen = await get(stubs, s.rid)
    said = name_of(seen)
    where = f"parts {states}, GetReservation {said}: {s}"
    if not s.held:
        if {"HELD", "COMMITTED"} & set(states.values()) or said != "NOT_FOUND":
            return [f"a short reservation left something behind: {where}"]
        return []
    if split := in_one_state_problems(holds, {s.rid: locations}):
        return [f"{problem}: {where}" for problem in split]
    (state,) = set(states.values())
    if state not in STATES or said != pb.ReservationState.Name(STATES[state]):
        return [f"GetReservation disagrees with the parts: {where}"]
    # a commit or release that answered OK decided the outcome
    decided = [
        a for c, a in s.answers[s.copies :] if isinstance(a, pb.Reservation) and c != "extend"
    ]
    if any(a.state != STATES[state] for a in decided):
        return [f"an OK answer was overturned: {where}"]
    return []
