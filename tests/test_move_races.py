"""MoveLine under concurrency, over real gRPC against a real server and store (one Redis and
a cluster), then the invariants, checked from the answers and from Redis itself:

- a reader polling the two rows while many lines move between them never sees their units
  free: the destination holds before the source lets go, so the two rows read at one
  instant (one Redis: MULTI) always hold every unit; were the source let go first, a read
  between the two steps would miss the line. (On a cluster no read spans both rows at
  once: the source is read first, then the destination, which covers every unit too,
  since a unit leaves the source's count only after it joined the destination's.);
- a Commit or a Release racing a move: one of them wins, and every answer says where the
  units went (a commit's answer names the rows its sale came off);
- retries of one move at once move the line once; two moves of one line at once: one wins.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.app import Omnistock
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.codecs import parse_row
from engine.store.keys import Keys

from .conftest import BUCKETS, ON_BOTH, served
from .grpc_helpers import level, line, stock_up
from .invariants import assert_reserved_is_held, in_one_state_problems, open_sagas, read_holds
from .test_concurrency import clients, outcome

pytestmark = ON_BOTH
LONG_TTL = 600.0  # no hold may expire while a test runs
OK = grpc.StatusCode.OK
LOCATIONS = ("L1", "L2", "L3")
STATE_AFTER = {"Commit": pb.RESERVATION_STATE_COMMITTED, "Release": pb.RESERVATION_STATE_RELEASED}


def reserve(rid: str, *lines: pb.ReservationLine) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=list(lines), ttl_seconds=LONG_TTL)


def move(rid: str, move_id: str, at: str, sku: str, to: str) -> pb.MoveLineRequest:
    return pb.MoveLineRequest(
        reservation_id=rid, move_id=move_id, location_id=at, sku=sku, to_location_id=to
    )


async def settled(call: Any) -> Any:
    """A Commit's or Release's answer; sent again on UNAVAILABLE, as the client library
    does (a move it waited on took longer than the saga timeout: a loaded machine)."""
    while True:
        got = await outcome(call())
        if got != grpc.StatusCode.UNAVAILABLE:
            return got


def lines_of(reservation: pb.Reservation) -> list[tuple[str, str, int]]:
    return sorted((ln.location_id, ln.sku, ln.qty) for ln in reservation.lines)


async def check_store(app: Omnistock, redis: aioredis.Redis, held: dict[str, list[str]]) -> None:
    """I1 at every location; I2 for each reservation (id -> its locations now); no saga
    left open."""
    holds = await read_holds(app.storage, LOCATIONS)
    assert_reserved_is_held(holds)
    assert not in_one_state_problems(holds, held)
    assert not await open_sagas(redis)


async def reserved_at(redis: Any, keys: Keys, source: str, target: str, sku: str) -> int:
    """The units held of `sku` at `source` and `target` together, straight from Redis: both
    rows read at one instant (MULTI) on one Redis; on a cluster, where no transaction spans
    two locations' slots, the source first, then the target."""
    rows = (keys.stock(source, sku), keys.stock(target, sku))
    if isinstance(redis, RedisCluster):
        got = [await redis.hget(rows[0], sku), await redis.hget(rows[1], sku)]
    else:
        async with redis.pipeline(transaction=True) as pipe:
            got = await pipe.hget(rows[0], sku).hget(rows[1], sku).execute()
    return sum(parse_row(value).reserved for value in got)


async def test_a_reader_never_sees_the_units_of_a_moving_line_free(
    redis: aioredis.Redis, redis_url: str
) -> None:
    rng = random.Random(7)
    async with served(redis_url) as (app, stubs):
        # given 40 holds of 1-3 units of S1 at L1, half of them with a line at L3 as well
        await stock_up(stubs, {("L1", "S1"): 200, ("L2", "S1"): 200, ("L3", "S2"): 200})
        qty = {f"r{i}": rng.randint(1, 3) for i in range(40)}
        for i, (rid, q) in enumerate(qty.items()):
            more = [line("L3", "S2", 1)] if i % 2 else []
            got = await stubs.reservations.Reserve(reserve(rid, line("L1", "S1", q), *more))
            assert got.HasField("reservation")
        total, reads, keys = sum(qty.values()), 0, Keys(BUCKETS)
        async with clients(app, 4) as movers:
            # when every line of S1 moves to L2 and back, four clients moving one line
            # after another, while a reader polls what the two rows hold
            for source, target in (("L1", "L2"), ("L2", "L1")):

                async def one_by_one(k: int, source: str, target: str) -> list[Any]:
                    """Mover k's share of the moves, one after another: so moves are under
                    way all along the reader's reads, not all in one batch."""
                    return [
                        await movers[k].reservations.MoveLine(
                            move(rid, f"to-{target}", source, "S1", target)
                        )
                        for rid in list(qty)[k::4]
                    ]

                moving = asyncio.gather(*(one_by_one(k, source, target) for k in range(4)))
                while not moving.done():
                    # then every read finds every unit held, at one row or the other
                    held = await reserved_at(redis, keys, source, target, "S1")
                    assert held >= total, f"{held} of {total} units held, read #{reads}"
                    reads += 1
                answers = [a for share in await moving for a in share]
                assert [a.reservation.state for a in answers] == [pb.RESERVATION_STATE_HELD] * 40
        assert reads > 0
        # and once all is done, every unit is held at L1 again, once
        assert (await level(stubs, "L1", "S1")).reserved == total
        assert (await level(stubs, "L2", "S1")).reserved == 0
        held_at = {rid: ["L1", "L3"] if i % 2 else ["L1"] for i, rid in enumerate(qty)}
        await check_store(app, redis, held_at)


@pytest.mark.parametrize("call", ["Commit", "Release"])
async def test_a_commit_or_release_racing_a_move_one_wins_and_the_answers_say_where_it_went(
    redis: aioredis.Redis, redis_url: str, call: str
) -> None:
    async with served(redis_url) as (app, stubs):
        # given 24 holds of 2 S1 at L1, half with a line at L3 as well (their commit and
        # release are sagas; the others' one script at L1)
        await stock_up(stubs, {("L1", "S1"): 100, ("L2", "S1"): 100, ("L3", "S2"): 100})
        ids = [f"r{i}" for i in range(24)]
        for i, rid in enumerate(ids):
            more = [line("L3", "S2", 1)] if i % 2 else []
            await stubs.reservations.Reserve(reserve(rid, line("L1", "S1", 2), *more))
        async with clients(app, 6) as cs:
            # when each one's line at L1 moves to L2 while, at once, it is committed (or
            # released)
            settle = getattr(cs[0].reservations, call)
            request = pb.CommitRequest if call == "Commit" else pb.ReleaseRequest

            async def race(i: int, rid: str) -> tuple[Any, Any]:
                moved = outcome(
                    cs[1 + i % 5].reservations.MoveLine(move(rid, "m1", "L1", "S1", "L2"))
                )
                done = settled(lambda: settle(request(reservation_id=rid)))
                return await asyncio.gather(moved, done)

            answers = await asyncio.gather(*(race(i, rid) for i, rid in enumerate(ids)))
        state = (
            pb.RESERVATION_STATE_COMMITTED if call == "Commit" else pb.RESERVATION_STATE_RELEASED
        )
        sold: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        where_now: dict[str, list[str]] = {}
        for rid, (moved, done) in zip(ids, answers, strict=True):
            # then the commit (release) is made, on the lines as the reservation ends ...
            final = await stubs.reservations.GetReservation(
                pb.GetReservationRequest(reservation_id=rid)
            )
            assert isinstance(done, pb.Reservation), (rid, done)
            assert (done.state, final.state) == (state, state)
            assert lines_of(done) == lines_of(final)
            # ... and the move either came first (its answer, the lines committed) or lost
            # cleanly, its line still at L1
            (where,) = [ln.location_id for ln in final.lines if ln.sku == "S1"]
            if isinstance(moved, pb.MoveLineResponse):
                assert lines_of(moved.reservation) == lines_of(final) and where == "L2"
                outcomes["move first"] += 1
            else:
                assert (moved, where) == (grpc.StatusCode.FAILED_PRECONDITION, "L1"), rid
                outcomes[f"{call.lower()} first"] += 1
            sold[where] += 2
            where_now[rid] = [ln.location_id for ln in final.lines]
        # and the stock shows exactly those sales (a release sells nothing), none held
        for loc in ("L1", "L2"):
            row = await level(stubs, loc, "S1")
            assert (row.on_hand, row.reserved) == (100 - (sold[loc] if call == "Commit" else 0), 0)
        assert sum(outcomes.values()) == len(ids), outcomes
        await check_store(app, redis, where_now)


async def test_retries_of_one_move_at_once_move_the_line_once(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with served(redis_url) as (app, stubs):
        # given 10 holds of 3 S1 at L1
        await stock_up(stubs, {("L1", "S1"): 100, ("L2", "S1"): 100, ("L3", "S1"): 100})
        ids = [f"r{i}" for i in range(10)]
        for rid in ids:
            await stubs.reservations.Reserve(reserve(rid, line("L1", "S1", 3)))
        async with clients(app, 6) as cs:
            # when each is moved to L2 by six clients at once under one move id, while two
            # other moves (to L3) of the same line race them
            sends = [
                (rid, c.reservations.MoveLine(move(rid, "m1", "L1", "S1", "L2")))
                for rid in ids
                for c in cs
            ]
            others = [
                (rid, cs[0].reservations.MoveLine(move(rid, "other", "L1", "S1", "L3")))
                for rid in ids
            ]
            got = await asyncio.gather(*(outcome(s) for _, s in sends + others))
        by_id: dict[str, list[Any]] = {rid: [] for rid in ids}
        where_now: dict[str, list[str]] = {}
        for (rid, _), answer in zip(sends + others, got, strict=True):
            by_id[rid].append(answer)
        # then for each, one of the two moves won: the six retries all answer it, or all
        # are refused (the line left L1 for L3), and the line is held once, where it went
        for rid, answers in by_id.items():
            retries, other = answers[:6], answers[6]
            final = await stubs.reservations.GetReservation(
                pb.GetReservationRequest(reservation_id=rid)
            )
            if isinstance(other, pb.MoveLineResponse):
                assert lines_of(final) == [("L3", "S1", 3)]
                assert retries == [grpc.StatusCode.FAILED_PRECONDITION] * 6, (rid, retries)
            else:
                assert other == grpc.StatusCode.FAILED_PRECONDITION
                assert lines_of(final) == [("L2", "S1", 3)]
                assert [lines_of(r.reservation) for r in retries] == [lines_of(final)] * 6
            where_now[rid] = [ln.location_id for ln in final.lines]
        rows = [await level(stubs, loc, "S1") for loc in ("L1", "L2", "L3")]
        assert sum(r.reserved for r in rows) == 30 and rows[0].reserved == 0
        await check_store(app, redis, where_now)
