"""Transfers (issue 17 point 3): created, shipped (the units leave `from`, and are supply due
at `to` on the expected date), received at `to` (all or part, each line's discrepancy
answered and put on the alerts stream) or cancelled (before shipping: nothing moves; after:
the units go back). Each step idempotent, refused by field and state, finished by the next
call after a crash between its steps. On one Redis and on a cluster."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from engine.domain.clock import ManualClock
from engine.domain.supply import DAY_MS, SupplyKind
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.supply import StockStep, SupplyOp

from .conftest import ON_BOTH, served
from .grpc_helpers import Stubs, count, delta, level, line, location

pytestmark = [ON_BOTH, pytest.mark.usefixtures("redis")]  # a flushed store each
CREATED, SHIPPED = pb.TRANSFER_STATE_CREATED, pb.TRANSFER_STATE_SHIPPED
RECEIVED, CANCELLED = pb.TRANSFER_STATE_RECEIVED, pb.TRANSFER_STATE_CANCELLED


def tl(sku: str, qty: int) -> pb.TransferLine:
    return pb.TransferLine(sku=sku, qty=qty)


def create_request(tid: str, at: int, lines: list[pb.TransferLine] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "transfer_id": tid,
        "from_location_id": "L1",
        "to_location_id": "L2",
        "lines": lines if lines is not None else [tl("A", 3), tl("B", 2)],
        "expected_at": at,
    }
    values.update(kw)
    return pb.CreateTransferRequest(**values)  # type: ignore[arg-type]


async def setup(stubs: Stubs, now: int) -> None:
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L2")]))
    events = [count("c1", "L1", "A", 10, now - 5000), count("c2", "L1", "B", 4, now - 5000)]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))


async def promise(stubs: Stubs, loc: str, sku: str) -> pb.Promise:
    request = pb.GetPromiseRequest(skus=[sku], location_ids=[loc])
    (p,) = (await stubs.availability.GetPromise(request)).promises
    return p


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_transfer_ships_and_is_received_in_part(redis_url: str) -> None:
    clock = ManualClock()
    now, at = clock.now, clock.now + 2 * DAY_MS
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, now)
        made = await stubs.stock.CreateTransfer(create_request("t1", at))
        assert made.state == CREATED
        assert (await level(stubs, "L1", "A")).on_hand == 10  # nothing moves yet
        shipped = await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t1"))
        assert shipped.state == SHIPPED
        assert (await level(stubs, "L1", "A")).on_hand == 7
        assert (await level(stubs, "L1", "B")).on_hand == 2
        # in transit: supply due at L2 on the expected date
        p = await promise(stubs, "L2", "A")
        assert (p.available_now, [(s.at, s.units) for s in p.steps]) == (0, [(at, 3)])
        # the same ship again: the same answer, nothing moves twice
        again = await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t1"))
        assert again == shipped
        assert (await level(stubs, "L1", "A")).on_hand == 7
        receipt = pb.ReceiveTransferRequest(transfer_id="t1", lines=[tl("A", 3), tl("B", 1)])
        got = await stubs.stock.ReceiveTransfer(receipt)
        assert got.state == RECEIVED
        assert [(d.sku, d.shipped, d.received, d.missing) for d in got.discrepancies] == [
            ("B", 2, 1, 1)
        ]
        assert (await level(stubs, "L2", "A")).on_hand == 3
        assert (await level(stubs, "L2", "B")).on_hand == 1
        assert (await promise(stubs, "L2", "A")).incoming == 0  # no longer in transit
        assert await stubs.stock.ReceiveTransfer(receipt) == got  # a retry
        assert (await level(stubs, "L2", "A")).on_hand == 3
        other = pb.ReceiveTransferRequest(transfer_id="t1")  # "everything arrived": not so
        assert await code_of(stubs.stock.ReceiveTransfer(other)) == grpc.StatusCode.ALREADY_EXISTS
        alerts = (await stubs.operator.ListAlerts(pb.ListAlertsRequest())).alerts
        found = [a for a in alerts if a.kind == "transfer_discrepancy"]
        assert [
            (a.details["transfer_id"], a.details["sku"], a.details["missing"]) for a in found
        ] == [("t1", "B", "1")]


async def test_a_transfer_id_is_one_transfer(redis_url: str) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, clock.now)
        request = create_request("t1", clock.now + DAY_MS)
        first = await stubs.stock.CreateTransfer(request)
        assert await stubs.stock.CreateTransfer(request) == first
        other = create_request("t1", clock.now + DAY_MS, [tl("A", 4)])
        assert await code_of(stubs.stock.CreateTransfer(other)) == grpc.StatusCode.ALREADY_EXISTS
        missing = pb.ShipTransferRequest(transfer_id="t9")
        assert await code_of(stubs.stock.ShipTransfer(missing)) == grpc.StatusCode.NOT_FOUND


async def test_a_cancel_before_shipping_moves_nothing_and_after_brings_the_units_back(
    redis_url: str,
) -> None:
    clock = ManualClock()
    at = clock.now + DAY_MS
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, clock.now)
        await stubs.stock.CreateTransfer(create_request("t1", at))
        cancelled = await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="t1"))
        assert (cancelled.state, cancelled.returned) == (CANCELLED, False)
        ship = stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t1"))
        assert await code_of(ship) == grpc.StatusCode.FAILED_PRECONDITION
        assert (await level(stubs, "L1", "A")).on_hand == 10

        await stubs.stock.CreateTransfer(create_request("t2", at))
        await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t2"))
        back = await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="t2"))
        assert (back.state, back.returned) == (CANCELLED, True)
        assert await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="t2")) == back
        assert (await level(stubs, "L1", "A")).on_hand == 10
        assert (await level(stubs, "L1", "B")).on_hand == 4
        assert (await promise(stubs, "L2", "A")).incoming == 0
        receive = stubs.stock.ReceiveTransfer(pb.ReceiveTransferRequest(transfer_id="t2"))
        assert await code_of(receive) == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_ship_short_of_stock_moves_nothing(redis_url: str) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, clock.now)
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="r1", lines=[line("L1", "B", 3)], ttl_seconds=600)
        )  # B: 4 on hand, 3 held: 1 may leave
        await stubs.stock.CreateTransfer(create_request("t1", clock.now + DAY_MS))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t1"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "B (1 available)" in (err.value.details() or "")
        assert (await level(stubs, "L1", "A")).on_hand == 10
        assert (await promise(stubs, "L2", "A")).incoming == 0
        cancelled = await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="t1"))
        assert (cancelled.state, cancelled.returned) == (CANCELLED, False)


async def test_a_ship_cut_short_by_a_crash_is_finished_by_the_next_call(redis_url: str) -> None:
    clock = ManualClock()
    at = clock.now + DAY_MS
    async with served(redis_url, clock) as (app, stubs):
        await setup(stubs, clock.now)
        await stubs.stock.CreateTransfer(create_request("t1", at))
        # a server moved the record on and took the units off L1, then died
        await app.storage.move_transfer("t1", ("CREATED",), "SHIPPING")
        out = StockStep("t1", "S", [("A", -3), ("B", -2)])
        await app.storage.change_supply("L1", [], clock.now, out)
        assert (await promise(stubs, "L2", "A")).incoming == 0  # counted nowhere, not twice
        got = await stubs.stock.ReceiveTransfer(pb.ReceiveTransferRequest(transfer_id="t1"))
        assert (got.state, list(got.discrepancies)) == (RECEIVED, [])
        assert (await level(stubs, "L1", "A")).on_hand == 7  # taken off once
        assert (await level(stubs, "L2", "A")).on_hand == 3
        assert (await promise(stubs, "L2", "A")).incoming == 0


async def test_a_cancel_after_a_short_ship_raced_by_its_retry_brings_the_units_back(
    redis_url: str,
) -> None:
    clock = ManualClock()
    at = clock.now + DAY_MS
    async with served(redis_url, clock) as (app, stubs):
        await setup(stubs, clock.now)
        await stubs.stock.CreateTransfer(create_request("t1", at))
        # a ship found L1 short and is about to set the record back; meanwhile its retry,
        # finding it SHIPPING, took the units off L1 (stock had come) and put them in transit
        await app.storage.move_transfer("t1", ("CREATED",), "SHIPPING")
        await app.storage.change_supply("L1", [], clock.now, StockStep("t1", "S", [("A", -3)]))
        await app.storage.move_transfer("t1", ("SHIPPING",), "CREATED")  # the short one's
        # when the transfer is cancelled, then the retry's in-transit step comes late
        got = await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="t1"))
        assert got.state == CANCELLED
        entry = [SupplyOp("t:t1|A", "A", 3, at, SupplyKind.TRANSFER)]
        late = await app.storage.change_supply("L2", entry, clock.now, StockStep("t1", "I"))
        # then the units are back at L1, and nothing is in transit to L2
        assert late.done
        assert (await level(stubs, "L1", "A")).on_hand == 10
        assert (await promise(stubs, "L2", "A")).incoming == 0


async def test_a_ship_step_after_a_cancel_of_a_created_transfer_moves_nothing(
    redis_url: str,
) -> None:
    clock = ManualClock()
    at = clock.now + DAY_MS
    async with served(redis_url, clock) as (app, stubs):
        await setup(stubs, clock.now)
        await stubs.stock.CreateTransfer(create_request("t1", at))
        got = await stubs.stock.CancelTransfer(pb.CancelTransferRequest(transfer_id="t1"))
        assert got.state == CANCELLED and not got.returned
        # a ship that read the record before the cancel makes its steps after it
        out = await app.storage.change_supply(
            "L1", [], clock.now, StockStep("t1", "S", [("A", -3)])
        )
        assert out.done
        assert (await level(stubs, "L1", "A")).on_hand == 10


async def test_a_count_taken_before_the_ship_keeps_it(redis_url: str) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, clock.now)
        await stubs.stock.CreateTransfer(create_request("t1", clock.now + DAY_MS))
        await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t1"))
        late = [
            count("c3", "L1", "A", 12, clock.now - 1000),
            delta("d1", "L1", "A", -1, clock.now + 1),
        ]
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=late))
        assert (await level(stubs, "L1", "A")).on_hand == 12 - 3 - 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"transfer_id": ""}, "transfer_id"),
        ({"from_location_id": "nowhere"}, "from_location_id"),
        ({"to_location_id": "L1"}, "to_location_id"),
        ({"lines": []}, "lines"),
        ({"lines": [tl("A", 0)]}, "lines[0].qty"),
        ({"lines": [tl("A", 1), tl("A", 2)]}, "lines[1].sku"),
        ({"lines": [tl("a b", 1)]}, "lines[0].sku"),
        ({"expected_at": 0}, "expected_at"),
    ],
)
async def test_a_bad_transfer_is_refused_by_field(
    redis_url: str, change: dict[str, object], field: str
) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (app, stubs):
        await setup(stubs, clock.now)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.CreateTransfer(create_request("t1", clock.now + DAY_MS, **change))  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
        assert await app.storage.transfer_record("t1") == {}


async def test_a_receipt_names_only_the_transfers_skus(redis_url: str) -> None:
    clock = ManualClock()
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, clock.now)
        await stubs.stock.CreateTransfer(create_request("t1", clock.now + DAY_MS))
        await stubs.stock.ShipTransfer(pb.ShipTransferRequest(transfer_id="t1"))
        bad = pb.ReceiveTransferRequest(transfer_id="t1", lines=[tl("Z", 1)])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.ReceiveTransfer(bad)
        assert (err.value.details() or "").startswith("lines[0].sku: 'Z' is not in the transfer")
        over = pb.ReceiveTransferRequest(transfer_id="t1", lines=[tl("A", 4), tl("B", 2)])
        got = await stubs.stock.ReceiveTransfer(over)  # one more arrived than was shipped
        assert [(d.sku, d.missing) for d in got.discrepancies] == [("A", -1)]


async def test_concurrent_steps_on_transfers_move_each_unit_once(redis_url: str) -> None:
    # given 6 transfers of 1 unit each from L1 (plenty there) to L2
    clock = ManualClock()
    at = clock.now + DAY_MS
    async with served(redis_url, clock) as (_, stubs):
        await setup(stubs, clock.now)
        tids = [f"t{i}" for i in range(6)]
        for tid in tids:
            await stubs.stock.CreateTransfer(create_request(tid, at, [tl("A", 1)]))
        # when every step is sent several times at once, in every order
        calls = []
        for i, tid in enumerate(tids):
            ship = pb.ShipTransferRequest(transfer_id=tid)
            calls += [stubs.stock.ShipTransfer(ship) for _ in range(3)]
            if i % 2:
                cancel = pb.CancelTransferRequest(transfer_id=tid)
                calls += [stubs.stock.CancelTransfer(cancel) for _ in range(3)]
            else:
                receive = pb.ReceiveTransferRequest(transfer_id=tid)
                calls += [stubs.stock.ReceiveTransfer(receive) for _ in range(3)]
        await asyncio.gather(*(code_of(c) for c in calls))
        # then every transfer ends in one state, and each unit moved once
        states = {}
        for tid in tids:
            got = await stubs.stock.CreateTransfer(create_request(tid, at, [tl("A", 1)]))
            states[tid] = (got.state, got.returned)
        received = sum(1 for s, _ in states.values() if s == RECEIVED)
        in_transit = sum(1 for s, _ in states.values() if s == SHIPPED)
        l1, l2 = await level(stubs, "L1", "A"), await level(stubs, "L2", "A")
        promised = await promise(stubs, "L2", "A")
        assert l2.on_hand == received
        assert promised.incoming == in_transit
        assert l1.on_hand == 10 - received - in_transit
        assert all(s in (RECEIVED, CANCELLED, SHIPPED, CREATED) for s, _ in states.values())
