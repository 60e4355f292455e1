"""Returns anywhere (issue 17): RecordReturn at any location, whoever sold the units; they
land in `returned` (or sellable, by the return rules); once per return id; naming the
original reservation, never more of a sku than it bought, across all its returns, however
many race. On one Redis and on the cluster."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from engine.domain.bundles import Bundle
from engine.domain.clock import ManualClock
from engine.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from engine.domain.model import Line
from engine.domain.returns import Return, ReturnLine
from engine.domain.states import StockState, row_name
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.storage import Storage
from engine.usecases.bundles import set_bundles
from engine.usecases.reservations import Reservations
from engine.usecases.returns import Returns

from .conftest import ON_BOTH, register, served
from .test_sweeper import count_event

pytestmark = ON_BOTH

RETURNED, SELLABLE = StockState.RETURNED, StockState.SELLABLE


@pytest.fixture
async def shop(storage: Storage, reservations: Reservations, clock: ManualClock) -> Returns:
    """A web order's DC (dc) and two stores (s1, s2), 10 of S1 and S2 at the DC."""
    now = clock.now_ms()
    await storage.apply_events("dc", [count_event("dc", s, 10, now) for s in ("S1", "S2")], now)
    await register(reservations, "dc", "s1", "s2")
    channels = reservations.channels
    return Returns(storage, reservations.locations, Metrics(), clock.now_ms, channels.table)


async def units(storage: Storage, location: str, sku: str) -> dict[StockState, int]:
    states = (SELLABLE, RETURNED)
    rows = await storage.rows([(location, row_name(sku, s)) for s in states])
    return {s: r.on_hand for s, r in zip(states, rows, strict=True)}


async def bought(reservations: Reservations, rid: str, qty: int = 3) -> None:
    assert (await reservations.reserve(rid, [Line("dc", "S1", qty), Line("dc", "S2", 1)], 60)).ok
    await reservations.commit(rid)


def ret(rid: str, location: str, qty: int, reservation: str = "", sku: str = "S1") -> Return:
    return Return(rid, location, (ReturnLine(sku, qty),), reservation)


async def test_a_web_order_returned_at_a_store_lands_in_returned_there(
    shop: Returns, storage: Storage, reservations: Reservations
) -> None:
    # given a web order of 3 units from the DC, committed
    await bought(reservations, "web-1")
    # when the customer brings 2 back to store s1
    got = await shop.record(ret("ret-1", "s1", 2, "web-1"))
    # then they wait for inspection at s1, not available anywhere
    assert got.lines == (ReturnLine("S1", 2, RETURNED),) and not got.replayed
    assert await units(storage, "s1", "S1") == {SELLABLE: 0, RETURNED: 2}
    assert (await storage.rows([("s1", "S1")]))[0].available == 0
    assert await units(storage, "dc", "S1") == {SELLABLE: 7, RETURNED: 0}
    # sent again: the same answer, nothing more lands
    again = await shop.record(ret("ret-1", "s1", 2, "web-1"))
    assert again.lines == got.lines and again.replayed
    assert await units(storage, "s1", "S1") == {SELLABLE: 0, RETURNED: 2}
    # the same id with other lines is refused
    with pytest.raises(AlreadyExists):
        await shop.record(ret("ret-1", "s1", 1, "web-1"))
    with pytest.raises(AlreadyExists):
        await shop.record(ret("ret-1", "s2", 2, "web-1"))
    metric = shop.metrics.registry.get_sample_value
    assert metric("omnistock_returns_total", {"outcome": "recorded"}) == 1
    assert metric("omnistock_returns_total", {"outcome": "replayed"}) == 1
    assert metric("omnistock_returns_total", {"outcome": "already_exists"}) == 2
    assert metric("omnistock_returned_units_total", {"state": "returned"}) == 2


async def test_returns_never_exceed_what_the_reservation_bought(
    shop: Returns, storage: Storage, reservations: Reservations
) -> None:
    await bought(reservations, "web-1", qty=3)
    await shop.record(ret("ret-1", "s1", 2, "web-1"))
    with pytest.raises(FailedPrecondition, match="may return 1 more of S1"):
        await shop.record(ret("ret-2", "s2", 2, "web-1"))
    with pytest.raises(FailedPrecondition, match="may return 0 more of S3"):
        await shop.record(ret("ret-3", "s2", 1, "web-1", sku="S3"))
    # nothing of a refused return landed, and its id is still free
    assert await units(storage, "s2", "S1") == {SELLABLE: 0, RETURNED: 0}
    assert (await shop.record(ret("ret-2", "s2", 1, "web-1"))).lines[0].qty == 1


async def test_concurrent_returns_of_one_reservation_stay_within_what_it_bought(
    shop: Returns, storage: Storage, reservations: Reservations
) -> None:
    # given 3 units bought; when 8 returns of one unit each race, at two stores
    await bought(reservations, "web-1", qty=3)
    calls = [shop.record(ret(f"ret-{i}", ("s1", "s2")[i % 2], 1, "web-1")) for i in range(8)]
    got = await asyncio.gather(*calls, return_exceptions=True)
    # then exactly 3 are recorded, the others refused, and 3 units landed in all
    assert sum(not isinstance(g, BaseException) for g in got) == 3
    assert all(isinstance(g, FailedPrecondition) for g in got if isinstance(g, BaseException))
    landed = [(await units(storage, s, "S1"))[RETURNED] for s in ("s1", "s2")]
    assert sum(landed) == 3


async def test_only_a_committed_reservation_takes_returns(
    shop: Returns, reservations: Reservations
) -> None:
    with pytest.raises(NotFound):
        await shop.record(ret("ret-1", "s1", 1, "nobody"))
    assert (await reservations.reserve("held-1", [Line("dc", "S1", 1)], 60)).ok
    with pytest.raises(FailedPrecondition, match="HELD, not COMMITTED"):
        await shop.record(ret("ret-1", "s1", 1, "held-1"))
    await reservations.release("held-1")
    with pytest.raises(FailedPrecondition, match="RELEASED"):
        await shop.record(ret("ret-1", "s1", 1, "held-1"))


async def test_the_return_rules_send_units_straight_to_sellable_most_specific_first(
    shop: Returns, storage: Storage
) -> None:
    # given: s1 puts returns back on sale, but never S2 there; S3 goes on sale anywhere
    from engine.domain.returns import ReturnRule

    version = await shop.set_rules(
        [ReturnRule("s1", "", True), ReturnRule("s1", "S2", False), ReturnRule("", "S3", True)]
    )
    assert version >= 1
    both = (ReturnLine("S1", 1), ReturnLine("S2", 1), ReturnLine("S3", 1))
    got = await shop.record(Return("ret-1", "s1", both))
    assert [ln.state for ln in got.lines] == [SELLABLE, RETURNED, SELLABLE]
    got = await shop.record(Return("ret-2", "s2", both))
    assert [ln.state for ln in got.lines] == [RETURNED, RETURNED, SELLABLE]
    assert (await storage.rows([("s1", "S1")]))[0].available == 1
    # a rule removed: the default again (a replay still answers as recorded)
    await shop.set_rules([ReturnRule("s1", "", remove=True)])
    assert (await shop.record(Return("ret-3", "s1", both[:1]))).lines[0].state is RETURNED
    assert (await shop.record(Return("ret-1", "s1", both))).lines[0].state is SELLABLE


async def test_a_return_is_checked_field_by_field(shop: Returns) -> None:
    cases = [
        (Return("", "s1", (ReturnLine("S1", 1),)), "return_id"),
        (Return("r", "s 1", (ReturnLine("S1", 1),)), "location_id"),
        (Return("r", "s1", ()), "lines"),
        (Return("r", "s1", (ReturnLine("S1", 0),)), r"lines\[0\].qty"),
        (Return("r", "s1", (ReturnLine("S1#x", 1),)), r"lines\[0\].sku"),
        (Return("r", "s1", (ReturnLine("S1", 1), ReturnLine("S1", 2))), r"lines\[1\].sku"),
        (Return("r", "s1", (ReturnLine("S1", 1),), "r{1}"), "reservation_id"),
        (Return("r", "nowhere", (ReturnLine("S1", 1),)), "location_id"),
    ]
    for value, field in cases:
        with pytest.raises(InvalidArgument, match=f"^{field}"):
            await shop.record(value)


async def test_a_return_over_grpc_and_an_inspection_that_puts_it_on_sale(
    storage: Storage, clock: ManualClock, redis_url: str
) -> None:
    async with served(redis_url, clock) as (_, stubs):
        request = pb.RecordReturnRequest(
            return_id="ret-9", location_id="L1", lines=[pb.ReturnLine(sku="S1", qty=2)]
        )
        got = await stubs.stock.RecordReturn(request)
        assert [(ln.sku, ln.qty, ln.state) for ln in got.lines] == [
            ("S1", 2, pb.STOCK_STATE_RETURNED)
        ]
        assert not got.replayed and (await stubs.stock.RecordReturn(request)).replayed
        # inspection passed: a MOVE from returned to sellable
        move = pb.StockEvent(
            event_id="insp-1",
            location_id="L1",
            sku="S1",
            kind=pb.EVENT_KIND_MOVE,
            qty=2,
            source_time=clock.now_ms() + 1,
            state=pb.STOCK_STATE_RETURNED,
            to_state=pb.STOCK_STATE_SELLABLE,
        )
        clock.advance(10)
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[move]))
        read = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"], states=True)
        )
        assert [(lv.available, lv.returned) for lv in read.levels] == [(2, 0)]
        rules = pb.SetReturnRulesRequest(rules=[pb.ReturnRule(location_id="L9", to_sellable=True)])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.SetReturnRules(rules)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("rules[].location_id")


async def test_a_return_id_taken_at_a_location_is_refused_there_and_claims_nothing(
    shop: Returns, storage: Storage, reservations: Reservations
) -> None:
    # given two orders, and return ret-1 recorded at s1 (under the first), ret-2 under none
    await bought(reservations, "web-1", qty=2)
    await bought(reservations, "web-2", qty=2)
    await shop.record(ret("ret-1", "s1", 1, "web-1"))
    await shop.record(ret("ret-2", "s1", 1))
    # when the ids come back at s1 with other lines: under another order, and under none
    with pytest.raises(AlreadyExists):
        await shop.record(ret("ret-1", "s1", 2, "web-2"))
    with pytest.raises(AlreadyExists):
        await shop.record(ret("ret-2", "s1", 2))
    # then nothing more landed, and web-2's claim was taken back: it may still return 2
    assert await units(storage, "s1", "S1") == {SELLABLE: 0, RETURNED: 2}
    assert (await shop.record(ret("ret-3", "s2", 2, "web-2"))).lines[0].qty == 2


async def test_a_return_before_a_later_count_is_in_that_count(
    shop: Returns, storage: Storage, clock: ManualClock
) -> None:
    # given s1 puts returns on sale, and a count of s1 taken a second after now (a source
    # clock a little ahead), which saw the shelf with the returned unit on it
    from engine.domain.returns import ReturnRule

    await shop.set_rules([ReturnRule("s1", "", True)])
    now = clock.now_ms()
    await storage.apply_events("s1", [count_event("s1", "S1", 5, now + 1010)], now)
    # when the return is recorded now, then the count includes it: it is not added again
    await shop.record(ret("ret-1", "s1", 1))
    assert await units(storage, "s1", "S1") == {SELLABLE: 5, RETURNED: 0}
    # and a return after the count is added
    clock.advance(2000)
    await shop.record(ret("ret-2", "s1", 1))
    assert await units(storage, "s1", "S1") == {SELLABLE: 6, RETURNED: 0}


async def test_a_kit_order_takes_back_what_it_held_its_components_counted_once(
    shop: Returns, storage: Storage, reservations: Reservations
) -> None:
    # given an order of a kit (2 x S1 + 1 x S2) beside 1 S1 sold alone, committed: it took
    # 3 S1 and 1 S2 from the DC (its directory keeps those, then the lines as sent)
    await set_bundles(reservations.channels, [(Bundle("KIT", (("S1", 2), ("S2", 1))), False)])
    assert (await reservations.reserve("kit-1", [Line("dc", "KIT", 1), Line("dc", "S1", 1)])).ok
    await reservations.commit("kit-1")
    # then its components come back, as many as it took and no more (S1 once, not again
    # from the lines as sent)
    with pytest.raises(FailedPrecondition):
        await shop.record(ret("ret-1", "s1", 4, "kit-1"))
    assert (await shop.record(ret("ret-2", "s1", 3, "kit-1"))).lines == (
        ReturnLine("S1", 3, RETURNED),
    )
    # and the kit's own sku, which has no stock, is refused by field, with or without the
    # order, and nothing lands
    for order in ("kit-1", ""):
        with pytest.raises(InvalidArgument, match=r"lines\[0\]\.sku"):
            await shop.record(ret("ret-3", "s1", 1, order, sku="KIT"))
    assert (await storage.rows([("s1", row_name("KIT", RETURNED))]))[0].on_hand == 0
