"""The ingest path over gRPC: StreamEvents, ReconcileCount and SetMappings, on a real server
and a real Redis-compatible store (and again on a cluster)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import orjson
import pytest
import redis.asyncio as aioredis

from engine.api.stock import STREAM_READ_AHEAD
from engine.app import Omnistock
from engine.domain.model import MAX_EVENTS
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.keys import ALERTS
from engine.store.storage import EVENTS_PER_SCRIPT

from .conftest import ON_BOTH
from .grpc_helpers import T0, Stubs, count, delta, level, line, seed

pytestmark = ON_BOTH


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def stream(
    stubs: Stubs, batches: Sequence[Sequence[pb.StockEvent]]
) -> list[pb.StreamEventsResponse]:
    async def requests() -> AsyncIterator[pb.StreamEventsRequest]:
        for events in batches:
            yield pb.StreamEventsRequest(events=events)

    return [r async for r in stubs.stock.StreamEvents(requests())]


async def reconcile(
    stubs: Stubs, header: pb.CountHeader, lines: dict[str, int], per_message: int = 2
) -> pb.ReconcileCountResponse:
    items = [pb.CountLine(sku=s, qty=q) for s, q in lines.items()]

    async def requests() -> AsyncIterator[pb.ReconcileCountRequest]:
        yield pb.ReconcileCountRequest(header=header, lines=items[:per_message])
        for i in range(per_message, len(items), per_message):
            yield pb.ReconcileCountRequest(lines=items[i : i + per_message])
        yield pb.ReconcileCountRequest(end=True)

    return await stubs.stock.ReconcileCount(requests())


def outcomes(responses: Sequence[pb.StreamEventsResponse]) -> list[list[int]]:
    return [[a.outcome for a in r.acks] for r in responses]


# -- StreamEvents ------------------------------------------------------------------------


async def test_stream_acks_every_event_in_order_one_answer_per_request(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 10})
    got = await stream(
        stubs,
        [
            [delta("d1", "s1", "a", -2, T0 + 10), delta("d1", "s1", "a", -2, T0 + 10)],
            [count("c1", "s1", "a", 4, T0 + 5)],  # older than d1: d1 still counts on top
            [delta("d0", "s1", "a", -1, T0 + 1)],  # before the count at T0 + 5: in it already
        ],
    )
    assert outcomes(got) == [
        [pb.EVENT_OUTCOME_APPLIED, pb.EVENT_OUTCOME_DUPLICATE],
        [pb.EVENT_OUTCOME_APPLIED],
        [pb.EVENT_OUTCOME_STALE],
    ]
    assert [a.event_id for r in got for a in r.acks] == ["d1", "d1", "c1", "d0"]
    assert (await level(stubs, "s1", "a")).on_hand == 4 - 2


async def test_a_bad_event_is_rejected_with_its_reason_and_the_stream_goes_on(
    stubs: Stubs, server: Omnistock
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    got = await stream(
        stubs,
        [
            [delta("x1", "s1", "a", 0, T0 + 1)],  # a zero delta
            [delta("x2", "nowhere", "a", -1, T0 + 1), delta("ok", "s1", "a", -1, T0 + 2)],
            [delta("", "s1", "a", -1, T0 + 3)],
        ],
    )
    acks = [a for r in got for a in r.acks]
    assert [a.outcome for a in acks] == [
        pb.EVENT_OUTCOME_REJECTED,
        pb.EVENT_OUTCOME_REJECTED,
        pb.EVENT_OUTCOME_APPLIED,
        pb.EVENT_OUTCOME_REJECTED,
    ]
    assert acks[0].reason.startswith("events[0].qty: a DELTA must be non-zero")
    assert "unknown location 'nowhere'" in acks[1].reason
    assert acks[3].reason == "events[0].event_id: must not be empty"
    assert (await level(stubs, "s1", "a")).on_hand == 9
    rejected = server.metrics.registry.get_sample_value(
        "omnistock_stock_events_total", {"outcome": "rejected"}
    )
    assert rejected == 3


async def test_an_echo_of_a_committed_sale_is_not_subtracted_twice(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="web-1", lines=[line("s1", "a", 3)])
    )
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="web-1"))
    now = int(time.time() * 1000)
    got = await stream(stubs, [[delta("pos-9", "s1", "a", -3, now, reservation_id="web-1")]])
    assert outcomes(got) == [[pb.EVENT_OUTCOME_ECHO]]
    assert (await level(stubs, "s1", "a")).on_hand == 7


class HandlerDoor(grpc.aio.ServerInterceptor):
    """Counts, at the door of the StreamEvents handler, the requests it has taken from its
    stream and the answers it has given back."""

    def __init__(self) -> None:
        self.taken = 0
        self.given = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not details.method.endswith("/StreamEvents"):
            return handler
        serve = handler.stream_stream

        async def counted(
            requests: AsyncIterator[pb.StreamEventsRequest], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[pb.StreamEventsResponse]:
            async def taken() -> AsyncIterator[pb.StreamEventsRequest]:
                async for request in requests:
                    self.taken += 1
                    yield request

            async for answer in serve(taken(), context):
                self.given += 1
                yield answer

        return grpc.stream_stream_rpc_method_handler(
            counted, handler.request_deserializer, handler.response_serializer
        )


async def settled(door: HandlerDoor, within: float) -> tuple[int, int]:
    """(taken, given) once neither has moved for half a second."""
    seen, still_since = (-1, -1), time.monotonic()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now = (door.taken, door.given)
        if now != seen:
            seen, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 0.5:
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"the handler never settled: taken, given = {seen}")


async def test_the_server_reads_a_bounded_number_of_requests_ahead_of_its_answers(
    server: Omnistock, stubs: Stubs
) -> None:
    """Flow control: while nobody takes its answers, the handler takes at most
    STREAM_READ_AHEAD requests ahead of the batch it is answering (+1 waiting for room).
    The server's own StreamEvents handler runs on a gRPC server of the test's, whose
    interceptor counts what it takes and gives (the engine's server offers no such door)."""
    # given a client that streams 2,000 requests of 100 events with long ids (big answers)
    # and never reads an answer
    await seed(stubs, {("s1", "a"): 10})
    door = HandlerDoor()
    own = grpc.aio.server(interceptors=[door])
    pb_grpc.add_StockServiceServicer_to_server(server.stock_service, own)
    port = own.add_insecure_port("127.0.0.1:0")
    await own.start()

    async def producer() -> AsyncIterator[pb.StreamEventsRequest]:
        for i in range(2000):
            yield pb.StreamEventsRequest(
                events=[
                    delta(f"{i:05d}-{j:03d}-" + "x" * 110, "s1", "a", 1, T0 + i) for j in range(100)
                ]
            )

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.StockServiceStub(channel).StreamEvents(producer())
            # when the answers back up
            taken, given = await settled(door, within=30)
            call.cancel()
    finally:
        await own.stop(None)
    # then the handler stopped answering well before the end, and took few requests ahead
    assert 0 < given < 2000
    assert taken - given <= 1 + 2 * STREAM_READ_AHEAD, (taken, given)


async def test_many_events_through_one_stream_each_applied_once(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 0})
    batches = [
        [delta(f"m{i}-{j}", "s1", "a", 1, T0 + 1 + i * 100 + j) for j in range(50)]
        for i in range(40)
    ]
    got = await stream(stubs, batches + batches[:5])  # the first five sent twice
    flat = [a.outcome for r in got for a in r.acks]
    assert flat.count(pb.EVENT_OUTCOME_APPLIED) == 2000
    assert flat.count(pb.EVENT_OUTCOME_DUPLICATE) == 250
    assert (await level(stubs, "s1", "a")).on_hand == 2000


# -- mappings -----------------------------------------------------------------------------


async def test_platform_ids_are_translated_through_the_sources_mapping(stubs: Stubs) -> None:
    await seed(stubs, {("store-1", "SKU-1"): 10})
    await stubs.stock.SetMappings(
        pb.SetMappingsRequest(
            mappings=[
                pb.Mapping(
                    source="shopify",
                    kind=pb.MAPPING_KIND_LOCATION,
                    external_id="24826418",
                    id="store-1",
                ),
                pb.Mapping(
                    source="shopify",
                    kind=pb.MAPPING_KIND_ITEM,
                    external_id="271878346596884015",
                    id="SKU-1",
                ),
            ]
        )
    )
    got = await stream(
        stubs,
        [
            [
                pb.StockEvent(
                    event_id="shopify:w1",
                    location_id="24826418",
                    sku="271878346596884015",
                    kind=pb.EVENT_KIND_COUNT,
                    qty=6,
                    source_time=T0 + 1,
                    source="shopify",
                ),
                pb.StockEvent(
                    event_id="shopify:w2",
                    location_id="999",
                    sku="271878346596884015",
                    kind=pb.EVENT_KIND_COUNT,
                    qty=6,
                    source_time=T0 + 1,
                    source="shopify",
                ),
            ]
        ],
    )
    acks = got[0].acks
    assert acks[0].outcome == pb.EVENT_OUTCOME_APPLIED
    assert acks[1].outcome == pb.EVENT_OUTCOME_REJECTED
    assert acks[1].reason == "events[1].location_id: no shopify mapping for '999'"
    assert (await level(stubs, "store-1", "SKU-1")).on_hand == 6
    # a mapping removed ("" as its id) no longer translates
    await stubs.stock.SetMappings(
        pb.SetMappingsRequest(
            mappings=[
                pb.Mapping(source="shopify", kind=pb.MAPPING_KIND_LOCATION, external_id="24826418")
            ]
        )
    )
    again = await stream(
        stubs,
        [
            [
                pb.StockEvent(
                    event_id="shopify:w3",
                    location_id="24826418",
                    sku="x",
                    kind=pb.EVENT_KIND_COUNT,
                    qty=1,
                    source_time=T0 + 2,
                    source="shopify",
                )
            ]
        ],
    )
    assert again[0].acks[0].outcome == pb.EVENT_OUTCOME_REJECTED


async def test_an_unmapped_id_of_a_mapped_source_is_rejected_not_taken_for_ours(
    stubs: Stubs,
) -> None:
    """An item the source's mapping lacks would otherwise land on a phantom row, its event id
    spent: once the mapping is added, the platform's retry must still apply."""
    await seed(stubs, {("store-1", "SKU-1"): 10, ("store-1", "SKU-2"): 10})
    loc = pb.Mapping(source="pos", kind=pb.MAPPING_KIND_LOCATION, external_id="7", id="store-1")
    item = pb.Mapping(source="pos", kind=pb.MAPPING_KIND_ITEM, external_id="100", id="SKU-1")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[loc, item]))
    sale = delta("pos-1", "7", "200", -1, T0 + 1, source="pos")
    got = await stream(stubs, [[sale]])
    assert got[0].acks[0].reason == "events[0].sku: no pos mapping for '200'"
    late = pb.Mapping(source="pos", kind=pb.MAPPING_KIND_ITEM, external_id="200", id="SKU-2")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[late]))
    assert outcomes(await stream(stubs, [[sale]])) == [[pb.EVENT_OUTCOME_APPLIED]]
    assert (await level(stubs, "store-1", "SKU-2")).on_hand == 9


async def test_event_ids_are_told_apart_by_source_and_the_future_is_refused(
    stubs: Stubs,
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    now = int(time.time() * 1000)
    got = await stream(
        stubs,
        [
            [
                delta("sale-1", "s1", "a", -1, T0 + 1, source="till-1"),
                delta("sale-1", "s1", "a", -1, T0 + 2, source="till-2"),
                delta("sale-1", "s1", "a", -1, T0 + 3, source="till-2"),
                delta("ahead", "s1", "a", -1, now + 3_600_000),
            ]
        ],
    )
    assert outcomes(got) == [
        [
            pb.EVENT_OUTCOME_APPLIED,
            pb.EVENT_OUTCOME_APPLIED,
            pb.EVENT_OUTCOME_DUPLICATE,
            pb.EVENT_OUTCOME_REJECTED,
        ]
    ]
    assert got[0].acks[3].reason.startswith("events[3].source_time: more than 300 s in the future")
    assert (await level(stubs, "s1", "a")).on_hand == 8


async def test_an_oversized_message_is_rejected_and_the_stream_goes_on(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 0})
    big = [delta(f"b{i}", "s1", "a", 1, T0 + 1 + i) for i in range(MAX_EVENTS + 1)]
    got = await stream(stubs, [big, [delta("after", "s1", "a", 1, T0 + 1)]])
    assert {a.outcome for a in got[0].acks} == {pb.EVENT_OUTCOME_REJECTED}
    assert got[0].acks[0].reason == f"events: at most {MAX_EVENTS} events per message"
    assert outcomes(got)[1] == [pb.EVENT_OUTCOME_APPLIED]
    assert (await level(stubs, "s1", "a")).on_hand == 1


async def test_bad_mappings_are_refused_naming_the_field(stubs: Stubs) -> None:
    for field, m in [
        ("mappings[0].kind", pb.Mapping(source="s", external_id="1", id="x")),
        ("mappings[0].source", pb.Mapping(kind=pb.MAPPING_KIND_ITEM, external_id="1", id="x")),
        ("mappings[0].external_id", pb.Mapping(source="s", kind=pb.MAPPING_KIND_ITEM, id="x")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[m]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")


# -- ReconcileCount ------------------------------------------------------------------------


async def test_a_full_count_replaces_on_hand_as_of_its_time(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10, ("s1", "gone"): 4})
    # a sale after the count's time, and an offline sale from before it delivered late
    await stream(stubs, [[delta("after", "s1", "a", -1, T0 + 20)]])
    header = pb.CountHeader(location_id="s1", count_id="count-7", counted_at=T0 + 10)
    got = await reconcile(stubs, header, {"a": 5, "b": 8, "new": 3})
    assert (got.lines, got.changed, got.unchanged, got.zeroed) == (3, 3, 0, 1)
    late = await stream(stubs, [[delta("offline", "s1", "b", -2, T0 + 5)]])
    assert outcomes(late) == [[pb.EVENT_OUTCOME_STALE]]
    assert (await level(stubs, "s1", "a")).on_hand == 5 - 1  # the later sale counts on top
    assert (await level(stubs, "s1", "b")).on_hand == 8
    assert (await level(stubs, "s1", "new")).on_hand == 3
    assert (await level(stubs, "s1", "gone")).on_hand == 0  # missing from a full count
    # the same count again changes nothing
    again = await reconcile(stubs, header, {"a": 5, "b": 8, "new": 3})
    assert (again.changed, again.unchanged, again.zeroed) == (0, 3, 0)
    assert (await level(stubs, "s1", "a")).on_hand == 4


async def test_after_a_full_count_an_older_delta_is_stale_even_for_a_sku_it_never_saw(
    stubs: Stubs,
) -> None:
    """A full count that zeroes what it does not list says every row was 0 then, rows yet
    to exist included: a sale from before it, arriving after it, must not count, whichever
    order they came in (I5)."""
    await seed(stubs, {("s1", "a"): 10})
    header = pb.CountHeader(location_id="s1", count_id="full", counted_at=T0 + 10)
    await reconcile(stubs, header, {"a": 5})
    got = await stream(
        stubs,
        [[delta("old-sale", "s1", "never-seen", -1, T0 + 5), count("old", "s1", "b", 3, T0 + 9)]],
    )
    assert outcomes(got) == [[pb.EVENT_OUTCOME_STALE, pb.EVENT_OUTCOME_STALE]]
    later = await stream(stubs, [[delta("new-sale", "s1", "never-seen", 2, T0 + 11)]])
    assert outcomes(later) == [[pb.EVENT_OUTCOME_APPLIED]]
    assert (await level(stubs, "s1", "never-seen")).on_hand == 2


async def test_a_count_can_keep_the_rows_it_does_not_list(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10})
    header = pb.CountHeader(
        location_id="s1", count_id="partial", counted_at=T0 + 10, missing=pb.MISSING_SKUS_KEEP
    )
    got = await reconcile(stubs, header, {"a": 2})
    assert (got.changed, got.zeroed) == (1, 0)
    assert (await level(stubs, "s1", "b")).on_hand == 10


async def test_a_count_below_what_is_held_keeps_the_holds_and_names_the_uncovered(
    stubs: Stubs, redis: aioredis.Redis, server: Omnistock
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    for rid, qty in [("first", 3), ("second", 4), ("third", 2)]:
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line("s1", "a", qty)])
        )
        await asyncio.sleep(0.005)  # distinct hold times
    now = int(time.time() * 1000)
    header = pb.CountHeader(location_id="s1", count_id="c-short", counted_at=now)
    got = await reconcile(stubs, header, {"a": 5})
    (short,) = got.short_rows
    assert (short.location_id, short.sku, short.on_hand, short.reserved) == ("s1", "a", 5, 9)
    # covered oldest hold first: first gets 3, second 2 of its 4, third nothing
    assert [(u.reservation_id, u.qty, u.missing) for u in short.uncovered] == [
        ("second", 4, 2),
        ("third", 2, 2),
    ]
    row = await level(stubs, "s1", "a")
    assert (row.on_hand, row.reserved, row.available) == (5, 9, 0)
    (entry,) = await redis.xrange(ALERTS)
    fields = {k.decode(): v.decode() for k, v in entry[1].items()}
    assert fields["location_id"] == "s1" and fields["reserved"] == "9"
    assert [u["reservation_id"] for u in orjson.loads(fields["uncovered"])] == ["second", "third"]
    assert server.metrics.registry.get_sample_value("omnistock_shortages_total") == 1
    # the holds still stand: the first can be committed
    done = await stubs.reservations.Commit(pb.CommitRequest(reservation_id="first"))
    assert done.state == pb.RESERVATION_STATE_COMMITTED


async def test_a_batch_longer_than_one_script_is_applied_in_order_as_one_would_be(
    stubs: Stubs,
) -> None:
    """Past EVENTS_PER_SCRIPT events the batch goes to Redis in several scripts: an id seen
    in an earlier one is a duplicate in a later one, and a row short after an earlier one
    but covered by a later one is not reported short."""
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r", lines=[line("s1", "a", 8), line("s1", "b", 8)])
    )
    now = int(time.time() * 1000)
    filler = [delta(f"f{i}", "s1", "c", 1, now) for i in range(EVENTS_PER_SCRIPT - 1)]
    events = [
        delta("drop-a", "s1", "a", -5, now),  # a: 5 on hand, 8 held, in the first script
        delta("drop-b", "s1", "b", -5, now),  # b: the same
        *filler,
        delta("back-a", "s1", "a", 5, now),  # a covered again in the second script
        delta("drop-b", "s1", "b", -5, now),  # the same id again: a duplicate
    ]
    done = await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
    assert len(events) > EVENTS_PER_SCRIPT
    outcomes = list(done.outcomes)
    assert outcomes[:-1] == [pb.EVENT_OUTCOME_APPLIED] * (len(events) - 1)
    assert outcomes[-1] == pb.EVENT_OUTCOME_DUPLICATE
    assert [(r.sku, r.on_hand, r.reserved) for r in done.short_rows] == [("b", 5, 8)]
    assert (await level(stubs, "s1", "a")).on_hand == 10
    assert (await level(stubs, "s1", "c")).on_hand == EVENTS_PER_SCRIPT - 1


async def test_a_bad_count_is_refused_whole_and_changes_nothing(stubs: Stubs) -> None:
    await seed(stubs, {("s1", "a"): 10})
    good = pb.CountHeader(location_id="s1", count_id="c1", counted_at=T0 + 10)
    cases = [
        ("lines[2].sku", good, {"a": 1, "b": 2, "": 3}),
        ("header.counted_at", pb.CountHeader(location_id="s1", count_id="c1"), {"a": 1}),
        (
            "header.location_id",
            pb.CountHeader(location_id="nowhere", count_id="c1", counted_at=T0),
            {"a": 1},
        ),
    ]
    for field, header, lines in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reconcile(stubs, header, lines)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or ""), field
    assert (await level(stubs, "s1", "a")).on_hand == 10

    async def twice() -> AsyncIterator[pb.ReconcileCountRequest]:
        yield pb.ReconcileCountRequest(header=good, lines=[pb.CountLine(sku="a", qty=1)])
        yield pb.ReconcileCountRequest(lines=[pb.CountLine(sku="a", qty=2)], end=True)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.ReconcileCount(twice())
    assert "'a' is counted twice" in (err.value.details() or "")
    assert (await level(stubs, "s1", "a")).on_hand == 10


async def test_a_count_cut_off_before_its_end_is_refused_whole(stubs: Stubs) -> None:
    """A client that stops sending (cancelled, crashed, cut off) ends the stream without the
    message marked end: not one of the lines that did arrive is applied."""
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10})
    header = pb.CountHeader(location_id="s1", count_id="cut", counted_at=T0 + 10)

    async def cut_off() -> AsyncIterator[pb.ReconcileCountRequest]:
        yield pb.ReconcileCountRequest(header=header, lines=[pb.CountLine(sku="a", qty=1)])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.ReconcileCount(cut_off())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end: the stream ended before the message marked end" in (err.value.details() or "")
    empty = pb.CountHeader(location_id="s1", count_id="empty", counted_at=T0 + 10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reconcile(stubs, empty, {})
    assert "would zero every row" in (err.value.details() or "")
    assert [(await level(stubs, "s1", s)).on_hand for s in "ab"] == [10, 10]
