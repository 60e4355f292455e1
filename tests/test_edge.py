"""The edge: hostile or malformed input is refused with a defined status naming the field,
and a refused call changes nothing. Each test here began as a bug found from outside."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster

from engine.app import Omnistock
from engine.domain.clock import ManualClock
from engine.domain.errors import InvalidArgument
from engine.domain.model import (
    MAX_ID_LENGTH,
    EventKind,
    Line,
    ReservationState,
    StockEvent,
    check_id,
    check_ids,
)
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import (
    ALERTS,
    BANDS_ALERTED,
    BUNDLES,
    LEASES,
    LOCATIONS,
    LOCATIONS_VERSION,
    MAPPINGS_VERSION,
    RETURN_RULES,
    RETURN_RULES_VERSION,
    SAGAS,
    WAKES,
    Keys,
)
from engine.store.storage import Storage
from engine.usecases.mappings import MAX_CACHED_SOURCES
from engine.usecases.reservations import Reservations

from .conftest import ON_BOTH, all_keys, register, served
from .grpc_helpers import LAT, LON, Stubs, count, line, location, place, stock_up, store


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def snapshot(redis: aioredis.Redis | RedisCluster) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots, equal data."""
    return {key: await redis.dump(key) for key in await all_keys(redis)}


# -- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["S1\n", "S1\r\n", "\nS1", "S1\n\n", "S1\x00", "S 1", "S1\t", "{S1}", "S1\u2028"]
)
def test_an_id_with_a_line_break_or_control_character_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_id(value, "lines[0].sku")
    assert err.value.field == "lines[0].sku"


def _first_refused(values: list[str]) -> str | None:
    """The field check_id refuses first, one value at a time (None: all pass)."""
    for i, value in enumerate(values):
        try:
            check_id(value, f"skus[{i}]")
        except InvalidArgument as exc:
            return exc.field
    return None


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["S1", "S1\n", "A\nB", "\n", "", "x" * MAX_ID_LENGTH, "{S}"]),
            st.text(max_size=MAX_ID_LENGTH + 2),
        ),
        max_size=6,
    )
)
def test_a_list_of_ids_checked_at_once_refuses_what_each_check_would(values: list[str]) -> None:
    # check_ids matches a listing's skus joined by newlines in one go: a value holding a
    # newline ("A\nB") must not pass as two ids, and the field named is the first at fault
    expected = _first_refused(values)
    if expected is None:
        check_ids(values, "skus")
        return
    with pytest.raises(InvalidArgument) as err:
        check_ids(values, "skus")
    assert err.value.field == expected


async def test_a_sku_ending_in_a_newline_is_refused_before_it_reaches_a_row(
    stubs: Stubs, redis: aioredis.Redis
) -> None:
    # given a location
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L1")]))
    before = await snapshot(redis)
    # when a count and a hold name the sku "S1\n"
    err = await refused(
        stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[count("e1", "L1", "S1\n", 10)]))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].sku" in (err.details() or "")
    err = await refused(
        stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="r1", lines=[line("L1", "S1\n", 2)], ttl_seconds=1)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lines[0].sku" in (err.details() or "")
    # then nothing was written
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    "rpc", ["GetReservation", "Commit", "Release", "Extend"], ids=lambda name: name
)
async def test_a_reservation_id_ending_in_a_newline_is_invalid_not_unknown(
    stubs: Stubs, rpc: str
) -> None:
    requests = {
        "GetReservation": pb.GetReservationRequest(reservation_id="r1\n"),
        "Commit": pb.CommitRequest(reservation_id="r1\n"),
        "Release": pb.ReleaseRequest(reservation_id="r1\n"),
        "Extend": pb.ExtendRequest(reservation_id="r1\n", ttl_seconds=60),
    }
    err = await refused(getattr(stubs.reservations, rpc)(requests[rpc]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reservation_id" in (err.details() or "")


async def test_a_location_name_is_bounded_and_printable(stubs: Stubs) -> None:
    for name, why in (("x" * 201, "longer than"), ("Shop\nfront", "control")):
        loc = location("L1")
        loc.name = name
        err = await refused(stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[loc])))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "locations[0].name" in (err.details() or "") and why in (err.details() or "")


# -- key names ----------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9._:/@+-]{1,20}", fullmatch=True)
KEYS = Keys(stock_buckets=8)
GLOBAL = (
    LOCATIONS,
    LOCATIONS_VERSION,
    *WAKES,
    *SAGAS,
    MAPPINGS_VERSION,
    ALERTS,
    BANDS_ALERTED,
    *LEASES,
    BUNDLES,
    RETURN_RULES,
    RETURN_RULES_VERSION,
)


def every_key(a: str, b: str) -> dict[str, tuple[str, ...]]:
    """Each key a caller's ids (a, b) can name, by who names it."""
    return {
        "stock": (KEYS.stock(a, b),),
        "log": (KEYS.log(a, b),),
        "seen": (Keys.seen(a),),
        "part": (Keys.part(a, b),),
        "due": (Keys.due(a),),
        "capacity": (Keys.capacity(a),),
        "directory": (Keys.directory(a),),
        "full_count": (Keys.full_count(a),),
        "marks": (Keys.marks(a),),
        "channel_holds": (Keys.channel_holds(a),),
        "pools": (Keys.pools(a),),
        "source": (Keys.source(a),),
        "gaps": (Keys.gaps(a, b),),
        "mapping": (Keys.mapping(a),),
        "held": (Keys.held(a),),
        "bought": (Keys.bought(a, b),),
        "supply": (Keys.supply(a), Keys.supply_ids(a), Keys.transfer_steps(a)),
        "future_holds": (Keys.future_holds(a, b),),
        "transfer": (Keys.transfer(a),),
        "bands": (KEYS.bands(a, b),),
        "band_outbox": (Keys.band_outbox(a),),
        "band_number": (Keys.band_number(a),),
        "returned": (Keys.returned(a, b),),
    }


@given(ids, ids, ids, ids)
def test_no_caller_id_names_another_kind_of_key(a: str, b: str, c: str, d: str) -> None:
    # given two pairs of ids, each turned into every kind of key
    first, second = every_key(a, b), every_key(c, d)
    # then a key of one kind is never a key of another kind, nor one of the global keys
    for kind, keys in first.items():
        for other, theirs in second.items():
            if kind != other:
                assert not set(keys) & set(theirs), (kind, other)
        assert not set(keys) & set(GLOBAL), kind


async def test_a_mapping_source_named_v_is_just_a_source(stubs: Stubs) -> None:
    # given a source named "v" (once the name of the mappings' version counter)
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L1")]))
    mapping = pb.Mapping(source="v", kind=pb.MAPPING_KIND_LOCATION, external_id="x", id="L1")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[mapping]))
    # then further mappings and that source's events work
    other = pb.Mapping(source="shop", kind=pb.MAPPING_KIND_LOCATION, external_id="y", id="L1")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[other]))
    event = count("e1", "x", "S1", 4)
    event.source = "v"
    done = await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[event]))
    assert list(done.outcomes) == [pb.EVENT_OUTCOME_APPLIED]


async def test_an_event_source_is_checked_like_every_id(
    stubs: Stubs, redis: aioredis.Redis
) -> None:
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L1")]))
    before = await snapshot(redis)
    event = count("e1", "L1", "S1", 4)
    event.source = "s" * 700
    err = await refused(stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[event])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].source" in (err.details() or "")
    assert await snapshot(redis) == before


async def test_the_mapping_cache_is_bounded(stubs: Stubs, server: Omnistock) -> None:
    # given events from more distinct sources than the cache keeps
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L1")]))
    events = []
    for i in range(MAX_CACHED_SOURCES + 50):
        event = count(f"e{i}", "L1", "S1", 4)
        event.source = f"till-{i}"
        events.append(event)
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
    # then the process keeps no more than its bound
    assert len(server.stock_service.ingest.mappings.by_source) == MAX_CACHED_SOURCES


# -- load ---------------------------------------------------------------------------------


async def test_a_burst_of_calls_is_answered_never_cancelled(server: Omnistock) -> None:
    # given stock for everyone, and 3,000 holds sent at once over four channels
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        await stock_up(Stubs(channel), {("s1", "a"): 1_000_000})
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]

    async def hold(i: int) -> str:
        stubs = Stubs(channels[i % 4])
        request = pb.ReserveRequest(reservation_id=f"r{i}", lines=[line("s1", "a", 1)])
        try:
            await stubs.reservations.Reserve(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    got = collections.Counter(await asyncio.gather(*(hold(i) for i in range(3000))))
    for channel in channels:
        await channel.close()
    # then every call is answered, or refused as retryable: never CANCELLED
    assert set(got) <= {"OK", "RESOURCE_EXHAUSTED"}, got


async def test_calls_over_the_limit_are_resource_exhausted(one_redis_url: str) -> None:
    # given a server that takes two calls at once, both taken by open watch streams
    async with served(one_redis_url, max_concurrent_calls=2) as (_, stubs):
        watch = pb.WatchAvailabilityRequest(location_ids=["L1"], skus=["S1"], send_current=True)
        streams = [stubs.availability.WatchAvailability(watch) for _ in range(2)]
        for stream in streams:
            assert (await stream.read()).current  # under way
        # when a third call comes
        err = await refused(
            stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"])
            )
        )
        # then it is refused as retryable
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in streams:
            stream.cancel()


# -- answers ------------------------------------------------------------------------------


@ON_BOTH
async def test_a_partly_held_allocate_retried_answers_the_plan_it_held(stubs: Stubs) -> None:
    # given an order of which only one line can be filled, held in part
    await place(stubs, [store("x", 2)], {("x", "a"): 10})
    request = pb.AllocateRequest(
        lines=[pb.BasketLine(sku="a", qty=2), pb.BasketLine(sku="b", qty=3)],
        latitude=LAT,
        longitude=LON,
        reserve=True,
        reservation_id="o-1",
        allow_partial=True,
    )
    first = await stubs.sourcing.Allocate(request)
    assert first.reservation.state == pb.RESERVATION_STATE_HELD
    assert [(ln.sku, ln.qty) for ln in first.reservation.lines] == [("a", 2)]
    assert [(u.sku, u.qty) for u in first.unfilled] == [("b", 3)]
    # when the same call is retried
    again = await stubs.sourcing.Allocate(request)
    # then it answers the plan it held, with the same lines unfilled, holding nothing more
    assert again.attempts == 0
    assert [(ln.sku, ln.qty) for ln in again.reservation.lines] == [
        (ln.sku, ln.qty) for ln in first.reservation.lines
    ]
    assert [(u.sku, u.qty) for u in again.unfilled] == [(u.sku, u.qty) for u in first.unfilled]


async def test_an_unexpected_failure_is_internal_logged_once_and_counted(
    stubs: Stubs, server: Omnistock, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # given a stock row that a failing disk turned to garbage
    await stock_up(stubs, {("L1", "S1"): 5})
    await redis.hset(server.storage.keys.stock("L1", "S1"), "S1", "garbage")
    # when it is read
    with caplog.at_level(logging.ERROR):
        err = await refused(
            stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"])
            )
        )
    # then the caller gets INTERNAL (no traceback), the log one record, the metrics the code
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in (err.details() or "")
    assert len([r for r in caplog.records if "GetAvailability" in r.getMessage()]) == 1
    samples = server.metrics.registry
    labels = {"method": "GetAvailability", "code": "INTERNAL"}
    assert samples.get_sample_value("omnistock_rpc_seconds_count", labels) == 1


@pytest.mark.parametrize(
    ("method", "shape"),
    [
        ("/omnistock.v1.ReservationService/Reserve", "unary_unary"),
        ("/omnistock.v1.AvailabilityService/WatchAvailability", "unary_stream"),
        ("/omnistock.v1.StockService/ReconcileCount", "stream_unary"),
        ("/omnistock.v1.StockService/StreamEvents", "stream_stream"),
    ],
)
async def test_bytes_that_are_not_the_message_are_invalid_argument(
    channel: grpc.aio.Channel, method: str, shape: str
) -> None:
    garbage = b"\xff\xff\xff\xff"
    call = getattr(channel, shape)(method)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if shape == "unary_unary":
            await call(garbage, timeout=5)
        elif shape == "unary_stream":
            async for _ in call(garbage, timeout=5):
                pass
        elif shape == "stream_unary":
            await call(iter([garbage]), timeout=5)
        else:
            async for _ in call(iter([garbage]), timeout=5):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert method.rsplit("/", 1)[-1] in (err.value.details() or "")


async def test_bytes_that_are_not_the_message_after_a_good_one_end_the_stream_invalid(
    channel: grpc.aio.Channel,
) -> None:
    # given a StreamEvents stream whose first message is a good one (empty), then garbage
    call = channel.stream_stream("/omnistock.v1.StockService/StreamEvents")
    # when it is sent, then the stream is answered and ended INVALID_ARGUMENT, at once: the
    # refusal used to race the first answer's send, fail as an unexpected error, and leave
    # the call without a status until the caller's deadline
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call(iter([b"", b"\xff\xff"]), timeout=5):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "StreamEvents" in (err.value.details() or "")


@pytest.mark.parametrize("ttl_seconds", [0.0004, 1e-300])
async def test_a_hold_asked_for_less_than_a_millisecond_lasts_one(
    storage: Storage, reservations: Reservations, clock: ManualClock, ttl_seconds: float
) -> None:
    # given a row with stock
    counted = StockEvent("c1", "L1", "S1", EventKind.COUNT, 5, clock.now - 10)
    await storage.apply_events("L1", [counted], clock.now)
    await register(reservations, "L1")
    # when a hold, and then its extension, ask for a positive ttl under a millisecond
    held = await reservations.reserve("r1", [Line("L1", "S1", 1)], ttl_seconds)
    extended = await reservations.extend("r1", ttl_seconds)
    # then each lasts a millisecond (truncated to 0 it was answered HELD yet already
    # expired), and the hold can be committed at once
    assert held.reservation is not None and held.reservation.expires_at == clock.now + 1
    assert extended.expires_at == clock.now + 1
    assert (await reservations.commit("r1")).state is ReservationState.COMMITTED


# -- a refused call writes nothing ------------------------------------------------------


@ON_BOTH
async def test_a_refused_reserve_or_extend_changes_no_key(
    stubs: Stubs, redis: aioredis.Redis | RedisCluster
) -> None:
    # given a reservation across two locations, and one at one location, since released
    await stock_up(stubs, {("s1", "a"): 5, ("s2", "a"): 5})
    two = [line("s1", "a", 1), line("s2", "a", 1)]
    await stubs.reservations.Reserve(pb.ReserveRequest(reservation_id="r2", lines=two))
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 1)])
    )
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="r1"))
    before = await snapshot(redis)
    # when each id is reused with other lines, and the released one extended
    for rid in ("r1", "r2"):
        for lines in ([line("s1", "a", 2)], [line("s1", "a", 2), line("s2", "a", 2)]):
            err = await refused(
                stubs.reservations.Reserve(pb.ReserveRequest(reservation_id=rid, lines=lines))
            )
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = await refused(
        stubs.reservations.Extend(pb.ExtendRequest(reservation_id="r1", ttl_seconds=60))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # then no key changed
    assert await snapshot(redis) == before


# -- reflection ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_is_served_as_v1_and_v1alpha(
    channel: grpc.aio.Channel, version: str
) -> None:
    # the two versions' messages are the same bytes, so v1alpha's classes speak v1 too
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answers = [
        a async for a in info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    ]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"omnistock.v1.ReservationService", "grpc.reflection.v1.ServerReflection"} <= names


async def test_a_zeroing_count_older_than_the_window_leaves_no_mark(stubs: Stubs) -> None:
    # given a zeroing count from 100 h ago (older than the 72 h window: stale)
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L1")]))
    now = int(time.time() * 1000)
    header = pb.CountHeader(
        location_id="L1", count_id="c1", counted_at=now - 100 * 3_600_000,
        missing=pb.MISSING_SKUS_ZERO,
    )  # fmt: skip
    message = pb.ReconcileCountRequest(
        header=header, lines=[pb.CountLine(sku="A", qty=5)], end=True
    )
    assert (await stubs.stock.ReconcileCount(iter([message]))).changed == 0
    # when a delta from before it arrives after it
    delta = count("d1", "L1", "B", 3, now - 101 * 3_600_000)
    delta.kind = pb.EVENT_KIND_DELTA
    done = await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[delta]))
    # then it applies, as it would have before the count (arrival order does not matter)
    assert list(done.outcomes) == [pb.EVENT_OUTCOME_APPLIED]
