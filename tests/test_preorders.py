"""Holds against future supply (a Reserve line's promise_by), issue 17 point 5 and I9: what
on hand cannot cover waits for supply due by the date; receiving supply converts those holds
to ordinary ones in the same step; a delayed, cut or cancelled supply re-promises what later
supply still covers by its date and names the rest in a promise-broken alert, none lost and
none doubled; GetPromise says what a line with a date could take. On one Redis and on a
cluster."""

from __future__ import annotations

import grpc
import pytest

from engine.domain.clock import ManualClock
from engine.domain.supply import DAY_MS
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import ON_BOTH, served
from .grpc_helpers import Stubs, count, location
from .test_supply import promise_of, steps, supply, upsert

pytestmark = [ON_BOTH, pytest.mark.usefixtures("redis")]  # a flushed store each
RECEIVED = pb.SUPPLY_OUTCOME_RECEIVED


def line(qty: int, by: int, loc: str = "L1", sku: str = "S1") -> pb.ReservationLine:
    return pb.ReservationLine(location_id=loc, sku=sku, qty=qty, promise_by=by)


async def reserve(stubs: Stubs, rid: str, *lines: pb.ReservationLine) -> pb.ReserveResponse:
    request = pb.ReserveRequest(reservation_id=rid, lines=lines, ttl_seconds=600)
    return await stubs.reservations.Reserve(request)


def waiting(res: pb.Reservation) -> list[tuple[str, int, int, bool]]:
    """(sku, units waiting for supply, promise date, broken) of each line with some."""
    return [
        (ln.sku, ln.future_qty, ln.promise_by, ln.promise_broken)
        for ln in res.lines
        if ln.future_qty
    ]


async def held(stubs: Stubs, rid: str) -> pb.Reservation:
    request = pb.GetReservationRequest(reservation_id=rid)
    return await stubs.reservations.GetReservation(request)


async def row(stubs: Stubs, sku: str = "S1") -> tuple[int, int]:
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=[sku], location_ids=["L1"])
    )
    (level,) = got.levels
    return level.on_hand, level.reserved


async def broken_alerts(stubs: Stubs) -> list[tuple[str, str, int, int]]:
    alerts = (await stubs.operator.ListAlerts(pb.ListAlertsRequest())).alerts
    return [
        (
            a.details["reservation_id"],
            a.details["sku"],
            int(a.details["qty"]),
            int(a.details["promise_by"]),
        )
        for a in alerts
        if a.kind == "promise_broken"
    ]


def days(clock: ManualClock) -> list[int]:
    """The start of each of the next 15 days by the clock, day[0] being now."""
    return [clock.now + d * DAY_MS for d in range(15)]


async def two_on_hand_and_two_orders(stubs: Stubs, day: list[int]) -> None:
    """S1 at L1: 2 on hand, and purchase orders of 5 due on days 3 (po-1) and 10 (po-2)."""
    count_2 = count("c", "L1", "S1", 2, day[0] - 1000)
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[count_2]))
    await upsert(stubs, supply("po-1", 5, day[3]), supply("po-2", 5, day[10]))


async def test_a_line_takes_what_is_on_hand_and_the_rest_from_supply_due_by_its_date(
    redis_url: str,
) -> None:
    clock = ManualClock()
    day = days(clock)
    async with served(redis_url, clock) as (_, stubs):
        await two_on_hand_and_two_orders(stubs, day)
        # when a preorder of 4 by day 5 comes: 2 on hand, 2 from po-1
        got = await reserve(stubs, "r1", line(4, day[5]))
        assert got.reservation.state == pb.RESERVATION_STATE_HELD
        assert waiting(got.reservation) == [("S1", 2, day[5], False)]
        assert got.reservation.expires_at == day[5] + 600_000  # kept until its date, and a ttl
        assert await row(stubs) == (2, 2)
        # then the promise by day 3 is po-1 less what r1 waits for; by day 10 po-2 too
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.future_held) == (0, [(day[3], 3), (day[10], 8)], 2)
        # a line for more than that by day 5 is short, one for that much is held
        short = await reserve(stubs, "r2", line(4, day[5]))
        assert [(s.sku, s.requested, s.available) for s in short.shortfalls] == [("S1", 4, 0)]
        assert waiting((await reserve(stubs, "r2", line(3, day[5]))).reservation) == [
            ("S1", 3, day[5], False)
        ]
        # a line without a date, or with one before any supply, takes on hand only
        assert (await reserve(stubs, "r3", line(1, 0))).shortfalls
        assert (await reserve(stubs, "r3", line(1, day[2]))).shortfalls
        # a retry is answered as the hold was; another date is another reservation
        assert waiting((await reserve(stubs, "r2", line(3, day[5]))).reservation) == [
            ("S1", 3, day[5], False)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reserve(stubs, "r2", line(3, day[6]))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # nothing waiting for supply is committed
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.reservations.Commit(pb.CommitRequest(reservation_id="r1"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "S1" in (err.value.details() or "")
        assert await row(stubs) == (2, 2)
        # an extend does not cut short a hold waiting for supply, and answers what waits as
        # GetReservation does
        request = pb.ExtendRequest(reservation_id="r1", ttl_seconds=60)
        extended = await stubs.reservations.Extend(request)
        assert extended.expires_at == day[5] + 600_000
        assert extended == await held(stubs, "r1")
        assert waiting(extended) == [("S1", 2, day[5], False)]
        # a release gives both back: on hand and the future hold
        await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="r1"))
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.future_held) == (2, [(day[3], 4), (day[10], 9)], 3)
        # po-1 arrives in full: r2's 3 units are held on hand, and no future hold is left
        assert await upsert(stubs, supply("po-1", 5, 0, received=True)) == [RECEIVED]
        assert await row(stubs) == (7, 3)
        assert waiting(await held(stubs, "r2")) == []
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.future_held) == (4, [(day[10], 9)], 0)
        # a line with a date that on hand covers is an ordinary hold: no longer than its ttl
        got = (await reserve(stubs, "r4", line(2, day[5]))).reservation
        assert (waiting(got), got.expires_at) == ([], day[0] + 600_000)


async def test_receiving_supply_holds_on_hand_what_waits_earliest_promise_first(
    redis_url: str,
) -> None:
    clock = ManualClock()
    day = days(clock)
    async with served(redis_url, clock) as (app, stubs):
        await two_on_hand_and_two_orders(stubs, day)
        await reserve(stubs, "r1", line(4, day[5]))  # 2 on hand, 2 waiting
        await reserve(stubs, "r3", line(5, day[12]))  # 5 waiting: po-1's 3 and po-2's 2
        await reserve(stubs, "r2", line(3, day[5]))  # 3 waiting: po-1's last 3 by day 5
        assert [waiting(await held(stubs, r))[0][1] for r in ("r1", "r2", "r3")] == [2, 3, 5]
        # when po-1 arrives, early and one short
        assert await upsert(stubs, supply("po-1", 4, 0, received=True)) == [RECEIVED]
        # then the 4 available units go earliest promise first: r1 takes its 2, r2 the 2
        # left of its 3; r2's last unit has no supply due by day 5: that promise is broken,
        # and named; r3 waits on po-2
        assert await row(stubs) == (6, 6)
        assert waiting(await held(stubs, "r1")) == []
        assert waiting(await held(stubs, "r2")) == [("S1", 1, 0, True)]
        assert waiting(await held(stubs, "r3")) == [("S1", 5, day[12], False)]
        assert await broken_alerts(stubs) == [("r2", "S1", 1, day[5])]
        units = app.metrics.registry.get_sample_value
        assert units("omnistock_future_holds_total", {"outcome": "converted"}) == 4
        assert units("omnistock_future_holds_total", {"outcome": "broken"}) == 1
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.future_held) == (0, [(day[10], 0)], 5)
        # a retry changes nothing, and r1 commits now
        assert await upsert(stubs, supply("po-1", 4, 0, received=True)) == [RECEIVED]
        assert await row(stubs) == (6, 6)
        await stubs.reservations.Commit(pb.CommitRequest(reservation_id="r1"))
        assert await row(stubs) == (2, 2)
        # r2 does not commit with a unit missing; its release gives back the 2 it holds
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.reservations.Commit(pb.CommitRequest(reservation_id="r2"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="r2"))
        assert await row(stubs) == (2, 0)
        # a cancelled supply is not received
        await upsert(stubs, supply("po-2", 0, 0, cancel=True))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upsert(stubs, supply("po-2", 5, 0, received=True))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_delay_or_a_cancel_re_promises_what_later_supply_covers_and_names_the_rest(
    redis_url: str,
) -> None:
    clock = ManualClock()
    day = days(clock)
    async with served(redis_url, clock) as (_, stubs):
        await upsert(stubs, supply("po-1", 4, day[3]), supply("po-2", 4, day[6]))
        wanted = {"a": (2, day[4]), "b": (2, day[6]), "c": (3, day[7]), "d": (1, day[7])}
        for rid, (qty, by) in wanted.items():
            assert (await reserve(stubs, rid, line(qty, by))).HasField("reservation"), rid
        # when po-1 is late: due on day 5, after a's date (not b's)
        assert await upsert(stubs, supply("po-1", 4, day[5])) == [pb.SUPPLY_OUTCOME_UPDATED]
        # then a is named, b is re-promised from po-1 at its new date, c and d stay
        assert await broken_alerts(stubs) == [("a", "S1", 2, day[4])]
        assert waiting(await held(stubs, "a")) == [("S1", 2, 0, True)]
        for rid in "bcd":
            qty, by = wanted[rid]
            assert waiting(await held(stubs, rid)) == [("S1", qty, by, False)], rid
        # when po-2 is cancelled: 4 units due by day 7 for b, c and d's 6
        await upsert(stubs, supply("po-2", 0, 0, cancel=True))
        # then the earliest promises are kept while they fit: b (2), then c (3) does not,
        # d (1) does; c is named; nobody is named twice
        assert await broken_alerts(stubs) == [("a", "S1", 2, day[4]), ("c", "S1", 3, day[7])]
        assert waiting(await held(stubs, "c")) == [("S1", 3, 0, True)]
        assert waiting(await held(stubs, "d")) == [("S1", 1, day[7], False)]
        p = await promise_of(stubs)
        assert (p.available_now, steps(p), p.future_held) == (0, [(day[5], 1)], 3)
        # a cut that still covers everyone names nobody
        await upsert(stubs, supply("po-1", 3, day[5]))
        assert len(await broken_alerts(stubs)) == 2
        assert await row(stubs) == (0, 0)


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([line(1, -5)], "lines[0].promise_by"),  # in the past (given from now)
        ([line(1, 0), line(1, 800 * DAY_MS, sku="S2")], "lines[1].promise_by"),  # > 2 years
        ([line(1, DAY_MS), line(1, 0, loc="L2")], "lines[].promise_by"),  # two locations
        ([line(1, DAY_MS), line(1, 2 * DAY_MS)], "lines[1].promise_by"),  # one sku, two dates
        ([line(1, DAY_MS, sku="KIT")], "lines[0].sku"),  # a bundle
    ],
)
async def test_a_bad_promise_is_refused_by_field(
    redis_url: str, lines: list[pb.ReservationLine], field: str
) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L2")]))
        kit = pb.Bundle(sku="KIT", components=[pb.BundleComponent(sku="S1", qty=2)])
        await stubs.stock.SetBundles(pb.SetBundlesRequest(bundles=[kit]))
        sent = [
            line(ln.qty, ln.promise_by and ln.promise_by + clock.now, ln.location_id, ln.sku)
            for ln in lines
        ]  # dates given from now
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reserve(stubs, "r1", *sent)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(field), err.value.details()


async def test_a_supply_is_received_or_cancelled_not_both(redis_url: str) -> None:
    async with served(redis_url, ManualClock()) as (_, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upsert(stubs, supply("po", 1, 0, cancel=True, received=True))
        assert (err.value.details() or "").startswith("supplies[0].received")


async def test_a_reservation_with_a_promise_date_holds_for_no_channel(redis_url: str) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        request = pb.ReserveRequest(
            reservation_id="r1", lines=[line(1, clock.now + DAY_MS)], channel="web"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.reservations.Reserve(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("channel:")
