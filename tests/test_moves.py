"""MoveLine through the use case, against the real store (one Redis and a cluster): where the
units are held after a move, what a retry, a short destination, a channel's rules, pick
capacity, a store's report of a sale and expiry do to it, and what is refused (nothing
changed then). Races and crashes: tests/test_move_races.py, tests/test_saga_stalls.py."""

from __future__ import annotations

import pytest

from engine.domain.clock import ManualClock
from engine.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from engine.domain.model import (
    EventKind,
    HoldResult,
    Line,
    Location,
    LocationType,
    Reservation,
    ReservationState,
    Shortfall,
    StockEvent,
)
from engine.domain.moves import Move
from engine.domain.rules import ChannelRule
from engine.store.codecs import encode_part_lines
from engine.store.keys import Keys
from engine.store.replies import PartReply, ReleaseMode, Reply
from engine.store.storage import Storage
from engine.usecases.channels import RuleChange
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, register, sweeper_of
from .invariants import assert_reserved_is_held, in_one_state_problems, read_holds

pytestmark = ON_BOTH
LOCATIONS = ("A", "B", "C")
HELD = ReservationState.HELD


async def stock(storage: Storage, clock: ManualClock, qty: int = 10, *where: str) -> None:
    """A count of `qty` of skus a and b at each location (all of them by default)."""
    now = clock.now_ms()
    for loc in where or LOCATIONS:
        events = [
            StockEvent(f"count-{loc}-{sku}-{now}", loc, sku, EventKind.COUNT, qty, now - 10)
            for sku in ("a", "b")
        ]
        await storage.apply_events(loc, events, now)


@pytest.fixture
async def world(storage: Storage, reservations: Reservations, clock: ManualClock) -> None:
    await stock(storage, clock)
    await register(reservations, *LOCATIONS)


def made(result: HoldResult) -> Reservation:
    assert result.reservation is not None, f"not held: {result}"
    return result.reservation


async def reserved(storage: Storage, *rows: tuple[str, str]) -> list[int]:
    return [row.reserved for row in await storage.rows(list(rows))]


async def check_clear(storage: Storage, reservations: Reservations, rid: str) -> None:
    """I1 (and each channel's count) at every location; I2 for the reservation as it is
    now; no saga left open."""
    holds = await read_holds(storage, LOCATIONS)
    assert_reserved_is_held(holds)
    now = await reservations.get(rid)
    assert not in_one_state_problems(holds, {rid: [ln.location for ln in now.lines]})
    assert await storage.open_sagas() == []


@pytest.mark.usefixtures("world")
async def test_a_moved_line_is_held_at_its_new_location_and_the_other_lines_stay(
    storage: Storage, reservations: Reservations
) -> None:
    # given a reservation of 2 a and 1 b at A
    held = made(await reservations.reserve("r1", [Line("A", "a", 2), Line("A", "b", 1)], 60))
    # when its line of a moves to B
    moved = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    # then the reservation holds b at A and a at B, as before until the same expiry
    lines = (Line("A", "b", 1), Line("B", "a", 2))
    assert moved == Reservation("r1", lines, HELD, held.expires_at)
    assert await reservations.get("r1") == moved
    assert await reserved(storage, ("A", "a"), ("A", "b"), ("B", "a")) == [0, 1, 2]
    holds = await read_holds(storage, LOCATIONS, ["r1"])
    assert holds.parts["r1"]["A"].lines == (("b", 1),)
    assert holds.parts["r1"]["B"].lines == (("a", 2),)
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_part_moved_whole_is_released_and_the_reservation_commits_where_it_is_now(
    storage: Storage, reservations: Reservations
) -> None:
    # given a reservation at A alone, moved whole to B
    made(await reservations.reserve("r1", [Line("A", "a", 2)], 60))
    made(await reservations.move_line("r1", "m1", Move("A", "a", 2, "B")))
    assert (await read_holds(storage, ["A"], ["r1"])).state("r1", "A") == "RELEASED"
    # when it is committed
    done = await reservations.commit("r1")
    # then the sale is at B, and A's stock is untouched
    assert done.lines == (Line("B", "a", 2),)
    rows = await storage.rows([("A", "a"), ("B", "a")])
    assert [(r.on_hand, r.reserved) for r in rows] == [(10, 0), (8, 0)]
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_moved_line_joins_the_reservations_part_at_its_destination(
    storage: Storage, reservations: Reservations
) -> None:
    # given a reservation with lines at A and B, B holding some of the same sku
    lines = [Line("A", "a", 2), Line("B", "a", 1), Line("B", "b", 1)]
    made(await reservations.reserve("r1", lines, 60))
    # when A's line moves to B
    moved = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    # then B's part holds 3 a and 1 b; A holds nothing
    assert moved.lines == (Line("B", "a", 3), Line("B", "b", 1))
    holds = await read_holds(storage, LOCATIONS, ["r1"])
    assert sorted(holds.parts["r1"]["B"].lines) == [("a", 3), ("b", 1)]
    assert holds.state("r1", "A") == "RELEASED"
    assert await reserved(storage, ("A", "a"), ("B", "a"), ("B", "b")) == [0, 3, 1]
    await check_clear(storage, reservations, "r1")
    # and a release gives every unit back
    assert (await reservations.release("r1")).state is ReservationState.RELEASED
    assert await reserved(storage, ("A", "a"), ("B", "a"), ("B", "b")) == [0, 0, 0]
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_the_same_move_again_answers_the_same_and_moves_nothing_twice(
    storage: Storage, reservations: Reservations
) -> None:
    # given a line moved from A to B under move id m1
    made(await reservations.reserve("r1", [Line("A", "a", 2), Line("C", "b", 1)], 60))
    first = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    rows = await storage.rows([("A", "a"), ("B", "a")])
    # when it is sent again (with the qty, or without), then the answer is the same and
    # no row changed (not even its version)
    for qty in (0, 2, 0):
        assert made(await reservations.move_line("r1", "m1", Move("A", "a", qty, "B"))) == first
    assert await storage.rows([("A", "a"), ("B", "a")]) == rows
    # and another move under the same id is refused, changing nothing
    for other in (Move("A", "a", 0, "C"), Move("C", "b", 0, "B"), Move("A", "a", 1, "B")):
        with pytest.raises(AlreadyExists):
            await reservations.move_line("r1", "m1", other)
    assert await storage.rows([("A", "a"), ("B", "a")]) == rows
    # and once committed, a retry answers it as it is now
    await reservations.commit("r1")
    again = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    assert (again.state, again.lines) == (ReservationState.COMMITTED, first.lines)
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_destination_short_moves_nothing_and_says_by_how_much(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given a hold of 3 a at A, and B with 2 a left free by another hold
    made(await reservations.reserve("r1", [Line("A", "a", 3)], 60))
    made(await reservations.reserve("other", [Line("B", "a", 8)], 60))
    before = await storage.rows([("A", "a"), ("B", "a")])
    # when the line is moved to B, then the answer is B's shortfall, and nothing changed
    got = await reservations.move_line("r1", "m1", Move("A", "a", 0, "B"))
    assert got == HoldResult(None, (Shortfall("B", "a", 3, 2),))
    assert await storage.rows([("A", "a"), ("B", "a")]) == before
    assert (await reservations.get("r1")).lines == (Line("A", "a", 3),)
    await check_clear(storage, reservations, "r1")
    # and the move id is not spent: once B has stock, the same move moves it
    clock.advance(1000)
    await stock(storage, clock, 20, "B")
    moved = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    assert moved.lines == (Line("B", "a", 3),)
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_move_of_a_line_the_reservation_does_not_hold_is_refused(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    made(await reservations.reserve("r1", [Line("A", "a", 2)], 60))
    before = await storage.rows([("A", "a"), ("B", "a")])
    refused = {
        Move("A", "b", 0, "B"): FailedPrecondition,  # no such line
        Move("B", "a", 0, "A"): FailedPrecondition,  # not there
        Move("A", "a", 1, "B"): FailedPrecondition,  # a line moves whole
        Move("A", "a", 0, "A"): InvalidArgument,  # where it is
        Move("A", "a", 0, "nowhere"): InvalidArgument,  # no such location
        Move("A", "a", -1, "B"): InvalidArgument,
        Move("A", "a{", 0, "B"): InvalidArgument,
    }
    for move, error in refused.items():
        with pytest.raises(error):
            await reservations.move_line("r1", "m1", move)
    with pytest.raises(NotFound):
        await reservations.move_line("no-such", "m1", Move("A", "a", 0, "B"))
    with pytest.raises(InvalidArgument, match="move_id"):
        await reservations.move_line("r1", "", Move("A", "a", 0, "B"))
    assert await storage.rows([("A", "a"), ("B", "a")]) == before
    await check_clear(storage, reservations, "r1")


@pytest.mark.parametrize("then", ["commit", "release", "expiry"])
@pytest.mark.usefixtures("world")
async def test_a_reservation_no_longer_held_does_not_move(
    storage: Storage, reservations: Reservations, clock: ManualClock, then: str
) -> None:
    # given reservations at one location and across two, committed, released or expired
    made(await reservations.reserve("one", [Line("A", "a", 2)], 60))
    made(await reservations.reserve("two", [Line("A", "a", 1), Line("C", "a", 1)], 60))
    for rid in ("one", "two"):
        if then == "expiry":
            clock.advance(60_000)
        else:
            await getattr(reservations, then)(rid)
    before = await storage.rows([("A", "a"), ("B", "a")])
    # when a line of either is moved, then that is refused, and nothing changed
    for rid in ("one", "two"):
        with pytest.raises(FailedPrecondition):
            await reservations.move_line(rid, "m1", Move("A", "a", 0, "B"))
    assert await storage.rows([("A", "a"), ("B", "a")]) == before
    assert await storage.open_sagas() == []


@pytest.mark.usefixtures("world")
async def test_a_channels_hold_moves_under_its_rules_at_the_destination(
    storage: Storage, reservations: Reservations
) -> None:
    # given the web never takes B's last 9 units, and a web hold of 2 a at A
    await reservations.channels.set([RuleChange("web", "B", rule=ChannelRule(buffer=9))])
    made(await reservations.reserve("r1", [Line("A", "a", 2)], 60, channel="web"))
    # when its line is moved to B, then it falls short as the web's hold would there
    # (B has 10 free, the web may take 1 of them)
    got = await reservations.move_line("r1", "m1", Move("A", "a", 0, "B"))
    assert got.shortfalls == (Shortfall("B", "a", 2, 1),)
    # and at C, with no rule, it moves, still the web's: counted as the web's hold at C
    made(await reservations.move_line("r1", "m2", Move("A", "a", 0, "C")))
    holds = await read_holds(storage, LOCATIONS, ["r1"])
    assert holds.parts["r1"]["C"].channel == "web"
    assert holds.by_channel == {(("C", "a"), "web"): 2}
    await check_clear(storage, reservations, "r1")


async def test_a_moved_ship_from_store_line_takes_the_destinations_pick_capacity(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given stores that pick 1 order a day (B) and 5 (A, C), and a plan's hold at A that
    # took one of A's orders
    def picking(loc: str, orders: int) -> Location:
        return Location(loc, loc, LocationType.STORE, 51.5, -0.12, ship_capacity=orders)

    await stock(storage, clock)
    await reservations.locations.upsert([picking("A", 5), picking("B", 1), picking("C", 5)])
    for rid in ("r1", "r2"):
        made(await reservations.reserve(rid, [Line("A", "a", 1)], 60, capacity={"A": 5}))
    day = reservations.today()
    assert await storage.capacity_used(["A", "B"], day) == [2, 0]
    # when r1's line moves to B, then B picks that order instead of A
    made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    assert await storage.capacity_used(["A", "B"], day) == [1, 1]
    # and r2's cannot follow it there (B picks no more today); nothing changed
    with pytest.raises(FailedPrecondition, match="pick capacity"):
        await reservations.move_line("r2", "m1", Move("A", "a", 0, "B"))
    assert await storage.capacity_used(["A", "B"], day) == [1, 1]
    assert await reserved(storage, ("A", "a"), ("B", "a")) == [1, 1]
    # and a hold that took no capacity (a Reserve) takes none where it moves
    made(await reservations.reserve("r3", [Line("A", "b", 1)], 60))
    made(await reservations.move_line("r3", "m1", Move("A", "b", 0, "C")))
    assert await storage.capacity_used(["A", "C"], day) == [1, 0]
    for rid in ("r1", "r2", "r3"):
        await check_clear(storage, reservations, rid)


@pytest.mark.parametrize("lines", [[("A", "a", 2)], [("A", "a", 2), ("C", "b", 1)]])
@pytest.mark.usefixtures("world")
async def test_a_retried_reserve_after_a_move_answers_the_reservation_as_it_is_now(
    storage: Storage, reservations: Reservations, lines: list[tuple[str, str, int]]
) -> None:
    # given a reservation (at one location, or two), its line at A moved to B
    first = [Line(*ln) for ln in lines]
    made(await reservations.reserve("r1", first, 60))
    moved = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    rows = await storage.rows([("A", "a"), ("B", "a")])
    # when the first Reserve is sent again, then it answers the moved reservation, and
    # holds nothing again
    assert made(await reservations.reserve("r1", first, 60)) == moved
    assert await storage.rows([("A", "a"), ("B", "a")]) == rows
    # but a Reserve of the moved lines is another reservation under its id
    with pytest.raises(AlreadyExists):
        await reservations.reserve("r1", list(moved.lines), 60)
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_reserve_retried_once_the_moved_lines_old_part_is_forgotten_holds_nothing_anew(
    storage: Storage, reservations: Reservations
) -> None:
    # given a reservation at A moved whole to B, and its part at A since forgotten (after
    # the retention, while the reservation, extended, is still held)
    first = [Line("A", "a", 2)]
    made(await reservations.reserve("r1", first, 60))
    moved = made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    await storage.command(lambda p: p.delete(Keys.part("A", "r1")))
    # when the first Reserve is sent again, then it answers the moved reservation, and A
    # holds nothing (on one Redis the hold refuses; on a cluster what it held is let go)
    assert made(await reservations.reserve("r1", first, 60)) == moved
    assert await reserved(storage, ("A", "a"), ("B", "a")) == [0, 2]
    holds = await read_holds(storage, LOCATIONS)
    assert holds.held_ids("A") == set()
    assert_reserved_is_held(holds)


@pytest.mark.usefixtures("world")
async def test_a_sale_reported_at_the_old_location_counts_once_its_line_has_moved(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given a hold of 2 a at A, and A's till reporting a sale of 1 under it (an echo,
    # kept on the hold while it is held)
    made(await reservations.reserve("r1", [Line("A", "a", 2)], 60))
    now = clock.now_ms()
    sale = StockEvent("sale-1", "A", "a", EventKind.DELTA, -1, now - 5, reservation_id="r1")
    got = await storage.apply_events("A", [sale], now)
    assert [o.value for o in got.outcomes] == ["ECHO"]
    # when the line moves to B, then A's sale is A's (the hold there is gone) ...
    made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    rows = await storage.rows([("A", "a"), ("B", "a")])
    assert [(r.on_hand, r.reserved) for r in rows] == [(9, 0), (10, 2)]
    # ... and a later report from A is A's own delta, not the moved hold's
    later = StockEvent("sale-2", "A", "a", EventKind.DELTA, -1, now - 4, reservation_id="r1")
    got = await storage.apply_events("A", [later], now)
    assert [o.value for o in got.outcomes] == ["APPLIED"]
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_moved_line_lasts_as_long_as_its_reservation(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given a reservation at A and C for 60 s, its line at A moved to B after 10 s
    made(await reservations.reserve("r1", [Line("A", "a", 1), Line("C", "a", 1)], 60))
    clock.advance(10_000)
    made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    # when it is extended, then the moved line is too: nothing expires at the first expiry
    extended = await reservations.extend("r1", 120)
    sweeper = await sweeper_of(storage, reservations, clock, *LOCATIONS)
    clock.advance(51_000)
    assert await sweeper.sweep() == 0
    assert (await reservations.get("r1")).expires_at == extended.expires_at
    # and at the new expiry both parts expire, every unit free again
    clock.advance(extended.expires_at - clock.now_ms())
    assert await sweeper.sweep() == 2
    assert (await reservations.get("r1")).state is ReservationState.EXPIRED
    assert await reserved(storage, ("A", "a"), ("B", "a"), ("C", "a")) == [0, 0, 0]
    await check_clear(storage, reservations, "r1")


@pytest.mark.usefixtures("world")
async def test_a_commit_or_release_of_the_lines_as_they_were_before_a_move_changes_nothing(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given a reservation of a and b at A, its a moved to B after a commit and a release
    # read it (at one location they act on the part, naming the lines they read; across
    # locations they decide in the directory, on the lines' generation they read)
    made(await reservations.reserve("r1", [Line("A", "a", 2), Line("A", "b", 1)], 60))
    read = await storage.directory("r1")
    assert read is not None and read.generation == 0
    made(await reservations.move_line("r1", "m1", Move("A", "a", 0, "B")))
    rows = await storage.rows([("A", "a"), ("A", "b"), ("B", "a")])
    # when they act on what they read, then the part answers MOVED, and the decision is
    # refused: nothing changed
    stale, now = encode_part_lines(read.lines), clock.now_ms()
    commit = await storage.commit_part("r1", "A", ["a", "b"], now, False, lines=stale)
    release = await storage.release_part("r1", "A", ["a", "b"], ReleaseMode.RELEASE, lines=stale)
    assert commit == release == PartReply(Reply.MOVED)
    assert not await storage.settle("r1", "", "COMMITTING", generation=read.generation)
    assert await storage.rows([("A", "a"), ("A", "b"), ("B", "a")]) == rows
    assert (await reservations.get("r1")).state is HELD
    # and the use case, reading again, commits the moved lines
    done = await reservations.commit("r1")
    assert done.lines == (Line("A", "b", 1), Line("B", "a", 2))
    rows = await storage.rows([("A", "a"), ("A", "b"), ("B", "a")])
    assert [(r.on_hand, r.reserved) for r in rows] == [(10, 0), (9, 0), (8, 0)]
    await check_clear(storage, reservations, "r1")
