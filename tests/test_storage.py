"""The Lua scripts, driven directly through the storage seam against a real server."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rexc

from engine.domain.clock import ManualClock
from engine.domain.errors import Unavailable
from engine.domain.model import (
    EventKind,
    EventOutcome,
    Line,
    ReservationState,
    StockEvent,
    fingerprint,
)
from engine.store.codecs import PickCapacity, encode_lines
from engine.store.keys import OLD_SAGAS, OLD_WAKE, Keys
from engine.store.replies import HoldReply, PartReply, ReleaseMode, Reply, Short
from engine.store.scripts import HEAVY_ARGS, Lanes
from engine.store.storage import ROWS_PER_READ, Storage
from engine.usecases.reservations import Reservations

from .conftest import HOUR_MS, ON_BOTH, all_keys, sweeper_of

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster
NOW = 1_767_225_600_000
L = "store-a"


def count(eid: str, sku: str, qty: int, t: int, location: str = L) -> StockEvent:
    return StockEvent(eid, location, sku, EventKind.COUNT, qty, t)


def delta(eid: str, sku: str, qty: int, t: int, rid: str = "") -> StockEvent:
    return StockEvent(eid, L, sku, EventKind.DELTA, qty, t, reservation_id=rid)


async def hold(storage: Storage, rid: str, lines: list[Line], exp: int = NOW + 60_000) -> HoldReply:
    fp = fingerprint(lines)
    directory = None if storage.cluster else encode_lines(lines)  # a cluster: a step of its own
    (answer,) = await storage.hold([storage.hold_call(rid, fp, L, lines, NOW, exp, directory)])
    return answer


async def test_hold_is_all_or_nothing_and_reports_every_short_line(storage: Storage) -> None:
    # given two skus with 5 and 1 units
    await storage.apply_events(
        L, [count("c1", "a", 5, NOW - 10), count("c2", "b", 1, NOW - 10)], NOW
    )
    # when a hold asks 6 of a and 2 of b
    answer = await hold(storage, "r1", [Line(L, "a", 6), Line(L, "b", 2)])
    # then both lines are reported short, and nothing is held
    assert answer == HoldReply(Reply.SHORT, short=(Short("a", 6, 5), Short("b", 2, 1)))
    rows = await storage.rows([(L, "a"), (L, "b")])
    assert [r.reserved for r in rows] == [0, 0]
    assert await storage.directory("r1") is None


async def test_hold_then_commit_moves_on_hand_and_reserved(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10)], NOW)
    assert (await hold(storage, "r1", [Line(L, "a", 3)])).reply is Reply.HELD
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved, row.available) == (5, 3, 2)
    assert await storage.commit_part("r1", L, ["a"], NOW + 1, force=False) == PartReply(
        Reply.COMMITTED, changed=True
    )
    assert await storage.commit_part("r1", L, ["a"], NOW + 2, force=False) == PartReply(
        Reply.COMMITTED, changed=False
    )
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved, row.available) == (2, 0, 2)


async def test_same_id_same_lines_holds_once_other_lines_conflict(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10)], NOW)
    first = await hold(storage, "r1", [Line(L, "a", 2)])
    assert first.reply is Reply.HELD
    again = await hold(storage, "r1", [Line(L, "a", 2)])
    assert again == HoldReply(Reply.EXISTS, ReservationState.HELD, first.expires_at)
    assert await hold(storage, "r1", [Line(L, "a", 1)]) == HoldReply(Reply.CONFLICT)
    (row,) = await storage.rows([(L, "a")])
    assert row.reserved == 2


async def test_release_gives_units_back_once(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10)], NOW)
    await hold(storage, "r1", [Line(L, "a", 4)])
    assert await storage.release_part("r1", L, ["a"], ReleaseMode.RELEASE) == PartReply(
        Reply.RELEASED, changed=True
    )
    assert await storage.release_part("r1", L, ["a"], ReleaseMode.RELEASE) == PartReply(
        Reply.RELEASED, changed=False
    )
    (row,) = await storage.rows([(L, "a")])
    assert row.reserved == 0 and row.available == 5


async def test_forget_with_a_fingerprint_lets_go_only_a_part_of_those_lines(
    storage: Storage,
) -> None:
    # given a part held with 2 units of a
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10)], NOW)
    await hold(storage, "r1", [Line(L, "a", 2)])
    other, own = fingerprint([Line(L, "a", 1)]), fingerprint([Line(L, "a", 2)])
    # when another attempt's lines are forgotten, then the part stays held
    forget = ReleaseMode.FORGET
    answer = await storage.release_part("r1", L, ["a"], forget, fp=other)
    assert answer == PartReply(Reply.MISSING)
    assert (await storage.rows([(L, "a")]))[0].reserved == 2
    # and its own are let go, the part gone with them
    answer = await storage.release_part("r1", L, ["a"], forget, fp=own)
    assert answer == PartReply(Reply.RELEASED, changed=True)
    assert (await storage.rows([(L, "a")]))[0].reserved == 0
    assert [p.state for p in await storage.parts("r1", [L])] == [None]


async def test_expire_takes_back_only_parts_past_their_expiry(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 9, NOW - 10)], NOW)
    await hold(storage, "early", [Line(L, "a", 2)], exp=NOW + 1000)
    await hold(storage, "late", [Line(L, "a", 3)], exp=NOW + 5000)
    assert await storage.due([L], NOW + 1000, 100) == {L: ["early"]}
    assert await storage.expire(L, ["early", "late"], NOW + 1000) == 1
    assert await storage.due([L, "elsewhere"], NOW + 5000, 100) == {L: ["late"]}
    (row,) = await storage.rows([(L, "a")])
    assert row.reserved == 3
    assert [p.state for p in await storage.parts("early", [L])] == ["EXPIRED"]


async def test_duplicate_event_is_applied_once(storage: Storage) -> None:
    got = await storage.apply_events(
        L, [delta("d1", "a", 4, NOW - 5), delta("d1", "a", 4, NOW - 5)], NOW
    )
    assert got.outcomes == [EventOutcome.APPLIED, EventOutcome.DUPLICATE]
    again = await storage.apply_events(L, [delta("d1", "a", 4, NOW - 5)], NOW + 10)
    assert again.outcomes == [EventOutcome.DUPLICATE]
    (row,) = await storage.rows([(L, "a")])
    assert row.on_hand == 4


async def test_count_keeps_later_deltas_and_ignores_earlier_ones(storage: Storage) -> None:
    # a sale at t=20 arrives first, then the count taken at t=10, then a sale from t=5
    await storage.apply_events(L, [delta("s20", "a", -2, NOW - 80)], NOW)
    await storage.apply_events(L, [count("c10", "a", 10, NOW - 90)], NOW)
    late = await storage.apply_events(L, [delta("s5", "a", -1, NOW - 95)], NOW)
    assert late.outcomes == [EventOutcome.STALE]
    (row,) = await storage.rows([(L, "a")])
    assert row.on_hand == 8 and row.as_of == NOW - 90


async def test_echo_of_a_committed_sale_is_not_subtracted_twice(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 100)], NOW)
    await hold(storage, "pos-1", [Line(L, "a", 2)])
    await storage.commit_part("pos-1", L, ["a"], NOW + 1, force=False)
    got = await storage.apply_events(L, [delta("till-9", "a", -2, NOW + 2, rid="pos-1")], NOW + 3)
    assert got.outcomes == [EventOutcome.ECHO]
    (row,) = await storage.rows([(L, "a")])
    assert row.on_hand == 3


async def test_a_sale_reported_before_its_commit_is_subtracted_once(storage: Storage) -> None:
    # given 5 units, 2 held by pos-1, and the store reporting that sale before the commit
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 100)], NOW)
    await hold(storage, "pos-1", [Line(L, "a", 2)])
    got = await storage.apply_events(L, [delta("till-9", "a", -2, NOW + 1, rid="pos-1")], NOW + 2)
    assert got.outcomes == [EventOutcome.ECHO]
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved) == (5, 2)
    # when the commit lands, the sale is subtracted once
    await storage.commit_part("pos-1", L, ["a"], NOW + 3, force=False)
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved) == (3, 0)


async def test_a_sale_reported_under_a_hold_that_is_released_counts_as_a_delta(
    storage: Storage,
) -> None:
    # given two holds whose sales the store reported while they were held
    await storage.apply_events(L, [count("c1", "a", 9, NOW - 100)], NOW)
    await hold(storage, "pos-1", [Line(L, "a", 2)])
    await hold(storage, "pos-2", [Line(L, "a", 3)])
    reports = [
        delta("t1", "a", -2, NOW + 1, rid="pos-1"),
        delta("t2", "a", -3, NOW + 5, rid="pos-2"),
    ]
    assert (await storage.apply_events(L, reports, NOW + 6)).outcomes == [EventOutcome.ECHO] * 2
    # and a count taken between the two sales, which includes the first only
    await storage.apply_events(L, [count("c2", "a", 7, NOW + 3)], NOW + 7)
    # when both holds are given back instead of committed
    assert await storage.release_part("pos-1", L, ["a"], ReleaseMode.RELEASE) == PartReply(
        Reply.RELEASED, changed=True
    )
    assert await storage.expire(L, ["pos-2"], NOW + 10**6) == 1
    # then the sales count as deltas: the first is in the count already, the second is not
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved) == (4, 0)


async def test_count_below_holds_keeps_them_and_reports_the_row_short(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 100)], NOW)
    await hold(storage, "r1", [Line(L, "a", 4)])
    got = await storage.apply_events(L, [count("c2", "a", 1, NOW - 50)], NOW)
    assert got.short_rows == [("a", 1, 4)]
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved, row.available) == (1, 4, 0)


async def test_a_row_below_zero_with_nothing_held_is_not_short(storage: Storage) -> None:
    """A shortage is a hold at risk, nothing else: a sale that arrives before the count it
    belongs after makes the row briefly negative, with no hold to warn about."""
    got = await storage.apply_events(L, [delta("d1", "a", -1, NOW - 100)], NOW)
    assert got.outcomes == [EventOutcome.APPLIED] and got.short_rows == []
    (row,) = await storage.rows([(L, "a")])
    assert (row.on_hand, row.reserved) == (-1, 0)
    # while a row that falls below what is held still is
    await storage.apply_events(L, [count("c1", "b", 5, NOW - 100)], NOW)
    await hold(storage, "r1", [Line(L, "b", 4)])
    got = await storage.apply_events(L, [delta("d2", "b", -3, NOW - 50)], NOW)
    assert got.short_rows == [("b", 2, 4)]


async def test_count_older_than_the_window_is_stale(storage: Storage) -> None:
    got = await storage.apply_events(L, [count("c1", "a", 5, NOW - 73 * HOUR_MS)], NOW)
    assert got.outcomes == [EventOutcome.STALE]


async def test_safety_stock_is_kept_back_from_holds(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10)], NOW)
    assert await storage.set_safety_stock(L, [("a", 2)]) == 1
    assert await hold(storage, "r1", [Line(L, "a", 4)]) == HoldReply(
        Reply.SHORT, short=(Short("a", 4, 3),)
    )
    assert (await hold(storage, "r2", [Line(L, "a", 3)])).reply is Reply.HELD


async def test_every_key_of_a_location_carries_its_hash_tag(
    storage: Storage, redis: aioredis.Redis
) -> None:
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10), delta("d", "a", 1, NOW)], NOW)
    await hold(storage, "r1", [Line(L, "a", 1)])
    keys = {k.decode() for k in await all_keys(redis)}
    location_keys = {k for k in keys if not k.startswith(("res:", "{omnistock"))}
    assert location_keys and all(k.startswith("{store-a}:") for k in location_keys)
    assert (Keys.directory("r1") in keys) is not storage.cluster  # one Redis: with the hold


async def test_a_stock_row_costs_at_most_64_bytes(storage: Storage, redis: aioredis.Redis) -> None:
    # given 20,000 counted rows at 10 locations (2,000 skus each, realistic ids and sizes)
    for loc in range(10):
        location = f"store-{loc:04d}"
        events = [
            count(f"c-{loc}-{i}", f"SKU-{i:06d}", 10 + i % 90, NOW - 1000, location)
            for i in range(2000)
        ]
        for start in range(0, 2000, 1000):
            await storage.apply_events(location, events[start : start + 1000], NOW)
    # when the keys holding them are measured (key, value and Redis' own overhead)
    rows = sum([await redis.memory_usage(k, samples=0) for k in await all_keys(redis, "*:s:*")])
    seen = sum([await redis.memory_usage(k, samples=0) for k in await all_keys(redis, "*:e")])
    per_row, per_event_id = rows / 20_000, seen / 20_000
    print(f"bytes per stock row: {per_row:.1f}; per remembered event id: {per_event_id:.1f}")
    # then a row stays within the budget of the brief (tens of millions of rows per retailer)
    assert per_row <= 64


async def test_expiry_index_holds_exactly_the_held_parts(storage: Storage) -> None:
    # given one held part, one short hold, and a retry of the held one with a later expiry
    await storage.apply_events(L, [count("c1", "a", 2, NOW - 10)], NOW)
    await hold(storage, "r1", [Line(L, "a", 1)], exp=NOW + 1000)
    await hold(storage, "short", [Line(L, "a", 5)], exp=NOW + 1000)
    await hold(storage, "r1", [Line(L, "a", 1)], exp=NOW + 9000)
    # then only r1 is indexed, at its real expiry
    assert await storage.due([L], NOW + 1000, 10) == {L: ["r1"]}
    # when it is committed, it leaves the index
    await storage.commit_part("r1", L, ["a"], NOW + 1, force=False)
    assert await storage.due([L], NOW + 10**9, 10) == {}


async def test_calls_in_flight_survive_an_emptied_script_cache(
    storage: Storage, redis: aioredis.Redis
) -> None:
    # given stock, and a script cache emptied as by a Redis restart
    await storage.apply_events(L, [count("c1", "a", 100, NOW - 10)], NOW)
    await redis.script_flush()
    # when 50 holds arrive at once
    answers = await asyncio.gather(*(hold(storage, f"r{i}", [Line(L, "a", 1)]) for i in range(50)))
    # then every one is held once, and the scripts are back
    assert [a[0] for a in answers] == ["HELD"] * 50
    (row,) = await storage.rows([(L, "a")])
    assert row.reserved == 50
    assert all(await redis.script_exists(storage.scripts["hold"].sha))


async def test_the_sweep_is_woken_at_each_locations_earliest_expiry(
    storage: Storage, redis: aioredis.Redis, reservations: Reservations, clock: ManualClock
) -> None:
    # given two holds at L, expiring at +1 s and +5 s (the clock's own time)
    sweeper = await sweeper_of(storage, reservations, clock, L)
    now = clock.now_ms()
    await storage.apply_events(L, [count("c1", "a", 9, now - 10)], now)
    await reservations.reserve("early", [Line(L, "a", 1)], 1)
    await reservations.reserve("late", [Line(L, "a", 1)], 5)
    # then L wakes the sweep at the first expiry
    assert await storage.wake_at(L) == now + 1000
    # when the sweep passes after it, L is put back at the next expiry, and then taken off
    clock.advance(1000)
    assert await sweeper.sweep() == 1
    assert await storage.wake_at(L) == now + 5000
    clock.advance(4000)
    assert await sweeper.sweep() == 1
    assert await storage.wake_at(L) is None


async def test_a_hold_whose_wake_up_was_lost_still_expires(
    storage: Storage, redis: aioredis.Redis, reservations: Reservations, clock: ManualClock
) -> None:
    # given a hold at L whose wake-up entry is gone (a client died between the two, or a
    # cluster ran them out of order), among other locations
    sweeper = await sweeper_of(storage, reservations, clock, L, "other-1", "other-2")
    now = clock.now_ms()
    await storage.apply_events(L, [count("c1", "a", 9, now - 10)], now)
    await reservations.reserve("lost", [Line(L, "a", 1)], 1)
    await redis.zrem(Keys.wake(L), L)
    # when its expiry passes, the sweep's slice of every location finds it within a round
    clock.advance(1000)
    expired = [await sweeper.sweep() for _ in range(4)]
    assert sum(expired) == 1
    assert (await reservations.get("lost")).state is ReservationState.EXPIRED


async def test_a_plan_takes_pick_capacity_and_gives_it_back_on_release_and_expiry(
    storage: Storage,
) -> None:
    # given a store that may pick 2 orders a day
    await storage.apply_events(L, [count("c1", "a", 50, NOW - 10)], NOW)
    today = PickCapacity(2, "20260101", "20251230")

    async def plan_hold(rid: str, exp: int = NOW + 60_000) -> HoldReply:
        lines = [Line(L, "a", 1)]
        call = storage.hold_call(rid, fingerprint(lines), L, lines, NOW, exp, None, today)
        return (await storage.hold([call]))[0]

    # when two plans are held, a third finds the day full, and nothing of it is held
    assert (await plan_hold("p1")).reply is Reply.HELD
    assert (await plan_hold("p2", exp=NOW + 1000)).reply is Reply.HELD
    assert await plan_hold("p3") == HoldReply(Reply.FULL, used=2)
    assert await storage.capacity_used([L], "20260101") == [2]
    (row,) = await storage.rows([(L, "a")])
    assert row.reserved == 2
    # then a release and an expiry each give one back; a hold without capacity takes none
    assert (await storage.release_part("p1", L, ["a"], ReleaseMode.RELEASE)).changed
    assert await storage.expire(L, ["p2"], NOW + 1000) == 1
    assert await storage.capacity_used([L], "20260101") == [0]
    assert (await hold(storage, "pos", [Line(L, "a", 1)])).reply is Reply.HELD
    assert await storage.capacity_used([L], "20260101") == [0]


async def test_pick_capacity_forgets_days_before_the_ones_kept(storage: Storage) -> None:
    await storage.apply_events(L, [count("c1", "a", 50, NOW - 10)], NOW)
    days = ["20260101", "20260102", "20260103", "20260104", "20260105"]
    for n, day in enumerate(days):
        lines = [Line(L, "a", 1)]
        keep_from = days[max(0, n - 2)]
        cap = PickCapacity(9, day, keep_from)
        call = storage.hold_call(f"p{n}", fingerprint(lines), L, lines, NOW, NOW + 9, None, cap)
        assert (await storage.hold([call]))[0].reply is Reply.HELD
    # only the last three days are counted still
    assert await storage.capacity_used([L], *days[:1]) == [0]
    assert [(await storage.capacity_used([L], d))[0] for d in days[2:]] == [1, 1, 1]


@pytest.mark.parametrize(
    "error",
    [
        rexc.ClusterError("TTL exhausted."),
        rexc.ReadOnlyError("You can't write against a read only replica."),
        rexc.MasterDownError("Link with MASTER is down"),
        rexc.TryAgainError("Multiple keys request during rehashing of slot"),
        rexc.ConnectionError("Connection closed by server."),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_what_redis_says_while_it_fails_over_or_moves_slots_is_unavailable(
    storage: Storage, error: Exception
) -> None:
    """Retryable, so answered UNAVAILABLE (which clients retry), never UNKNOWN or INTERNAL."""

    async def failing() -> None:
        raise error

    with pytest.raises(Unavailable):
        await storage.guard(failing)


async def test_the_indexes_of_before_their_shards_are_moved_into_them_at_start(
    storage: Storage, redis: aioredis.Redis
) -> None:
    # given a wake-up and a saga recorded in the one-key indexes of before
    await redis.zadd(OLD_WAKE, {"loc-old": 1234})
    await redis.zadd(OLD_SAGAS, {"rid-old": 5678})
    # when the store starts (twice: it must be idempotent)
    await storage.migrate()
    await storage.migrate()
    # then each is in its shard at its time, and the old keys are gone
    assert await storage.wake_at("loc-old") == 1234
    assert await storage.sagas_due(5678, 100) == ["rid-old"]
    assert await redis.exists(OLD_WAKE, OLD_SAGAS) == 0
    await storage.unschedule_saga("rid-old")
    await redis.zrem(Keys.wake("loc-old"), "loc-old")


async def test_a_wide_read_is_read_in_parts_and_answered_whole_in_order(storage: Storage) -> None:
    # given 1,500 counted skus at each of two locations (more than one read script's worth)
    skus = [f"SKU-{i:06d}" for i in range(1500)]
    for n, location in enumerate(("store-a", "store-b")):
        events = [
            count(f"w{n}-{i}", s, 1 + i + n, NOW - 1000, location) for i, s in enumerate(skus)
        ]
        await storage.apply_events(location, events, NOW)
    assert len(skus) > ROWS_PER_READ
    # when 3,000 rows and some that do not exist are read, the locations interleaved
    pairs = [(loc, s) for s in [*skus, "none"] for loc in ("store-b", "store-a")]
    rows = await storage.rows(pairs)
    # then every row is answered in the order asked
    expected = [0 if s == "none" else 1 + skus.index(s) + (loc == "store-b") for loc, s in pairs]
    assert [r.on_hand for r in rows] == expected
    assert await storage.available(pairs) == expected


async def test_a_small_call_is_not_queued_behind_heavy_ones(storage: Storage) -> None:
    """Big script calls have a lane (and a connection) of their own: with that lane stuck
    (as if a big call were under way), a small call is still answered."""
    if storage.cluster:
        pytest.skip("one Redis: a cluster has the same two lanes per node (engine/store/nodes.py)")
    assert isinstance(storage.batcher, Lanes)
    await storage.apply_events(L, [count("c1", "a", 5, NOW - 10)], NOW)
    heavy = storage.batcher.heavy
    heavy.inflight = heavy.max_inflight  # its one batch "under way": what comes waits
    wide = asyncio.ensure_future(storage.rows([(L, f"s{i}") for i in range(HEAVY_ARGS)]))
    try:
        await asyncio.sleep(0.05)
        assert not wide.done() and len(heavy.queue) == 1
        # the small read is answered all the same
        async with asyncio.timeout(5):
            (row,) = await storage.rows([(L, "a")])
        assert row.on_hand == 5 and not wide.done()
    finally:
        wide.cancel()
        heavy.inflight = 0


async def test_a_wide_read_cancelled_while_its_parts_are_built_leaves_nothing_behind(
    storage: Storage,
) -> None:
    """Cancelled between building two parts (its caller's deadline), a read has sent
    nothing, and leaves no script call made and never awaited."""
    pairs = [(L, f"s{i}") for i in range(3 * ROWS_PER_READ)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = asyncio.ensure_future(storage.rows(pairs))
        await asyncio.sleep(0)  # it built its first part and gave the loop a turn
        assert not read.done()
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
