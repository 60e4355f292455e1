"""The Redis Streams adapter against a real server and a real Redis-compatible store: in
process for the rules, and as its own process, killed mid-batch, for exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from adapters.config import DEFAULT_STREAM, dead_letter_stream, entry_fields
from adapters.replay import replay
from adapters.streams.consumer import Consumer, Options
from engine.app import Omnistock, create_server
from engine.domain.auth import Role
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

from . import grpc_helpers
from .conftest import ON_BOTH, settings_for
from .grpc_helpers import T0, Stubs, count, level, line, seed
from .processes import eventually
from .stream_helpers import caught_up, drain, group_state
from .test_auth import ROLES, bearer, principals_file

DEAD = dead_letter_stream(DEFAULT_STREAM)


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
async def consumer(redis: aioredis.Redis, channel: grpc.aio.Channel) -> Consumer:
    options = Options(DEFAULT_STREAM, "omnistock", "c1", batch=50, block_ms=50, claim_idle_ms=200)
    c = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
    await c.create_group()
    return c


def delta(
    event_id: str, loc: str, sku: str, qty: int, t: int, **extra: str | int
) -> dict[str, str]:
    """A stock DELTA as the fields of an ingest stream entry."""
    return entry_fields(grpc_helpers.delta(event_id, loc, sku, qty, t, **extra))


async def append(redis: aioredis.Redis, *entries: dict[str, str], at: int | None = None) -> None:
    """Appends the entries; `at`: as if appended at that time (ms), which their ids tell."""
    async with redis.pipeline(transaction=False) as pipe:
        for i, fields in enumerate(entries):
            entry_id = f"{at}-{i}" if at is not None else "*"
            pipe.xadd(DEFAULT_STREAM, fields, id=entry_id)  # type: ignore[arg-type]
        await pipe.execute()


async def dead_letters(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(DEAD)
    ]


@ON_BOTH  # a cluster too: the stream, its dead letters and the engine's keys on any node
async def test_entries_are_applied_once_each_and_acknowledged(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await append(
        redis,
        delta("sale-1", "s1", "a", -2, T0 + 10),
        delta("sale-1", "s1", "a", -2, T0 + 10),  # the till sent it twice
        entry_fields(count("count-1", "s1", "a", 20, T0 + 5)),  # a count from before sale-1
        delta("offline", "s1", "a", -3, T0 + 2),  # before that count: included in it
    )
    await drain(redis, consumer)
    assert (await level(stubs, "s1", "a")).on_hand == 20 - 2
    outcomes = consumer.metrics.registry.get_sample_value
    assert outcomes("omnistock_streams_events_total", {"outcome": "applied"}) == 2
    assert outcomes("omnistock_streams_events_total", {"outcome": "duplicate"}) == 1
    assert outcomes("omnistock_streams_events_total", {"outcome": "stale"}) == 1
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] == 0
    assert await redis.xlen(DEAD) == 0


async def test_a_stores_echo_of_a_committed_sale_is_not_subtracted_twice(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="web-7", lines=[line("s1", "a", 4)])
    )
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="web-7"))
    now = int(time.time() * 1000)
    await append(redis, delta("till-55", "s1", "a", -4, now, reservation_id="web-7"))
    await drain(redis, consumer)
    assert (await level(stubs, "s1", "a")).on_hand == 6
    got = consumer.metrics.registry.get_sample_value(
        "omnistock_streams_events_total", {"outcome": "echo"}
    )
    assert got == 1


@ON_BOTH
async def test_poison_entries_are_dead_lettered_with_the_reason_and_do_not_block(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await append(
        redis,
        {**delta("p1", "s1", "a", -1, T0 + 1), "kind": "SOLD"},  # not a stock event
        {**delta("p2", "s1", "a", -1, T0 + 1), "qty": "lots"},
        delta("p3", "nowhere", "a", -1, T0 + 1),  # the server rejects it
        *[delta(f"ok{i}", "s1", "a", -1, T0 + 10 + i) for i in range(3)],
    )
    await drain(redis, consumer)
    assert (await level(stubs, "s1", "a")).on_hand == 7
    letters = await dead_letters(redis)
    assert [d["event_id"] for d in letters] == ["p1", "p2", "p3"]
    assert letters[0]["dead.reason"] == "kind: must be COUNT or DELTA, got 'SOLD'"
    assert letters[1]["dead.reason"] == "qty: must be an integer, got 'lots'"
    assert "unknown location 'nowhere'" in letters[2]["dead.reason"]
    # named by the entry's own field and id, not by its place in the adapter's batch
    assert letters[2]["dead.reason"].startswith("location_id: ")
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(DEFAULT_STREAM, count=3)]
    assert [d["dead.id"] for d in letters] == ids and {d["dead.from"] for d in letters} == {
        "stream"
    }
    dead = consumer.metrics.registry.get_sample_value
    assert dead("omnistock_streams_dead_letters_total", {"reason": "unparsable"}) == 2
    assert dead("omnistock_streams_dead_letters_total", {"reason": "rejected"}) == 1
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] == 0


async def test_an_entry_delivered_over_max_deliveries_is_dead_lettered_and_not_applied(
    stubs: Stubs, redis: aioredis.Redis, channel: grpc.aio.Channel
) -> None:
    # given two entries that a consumer, c1, kept crashing on before it could answer: each
    # crash a delivery, the first entry 3 times, the second twice
    await seed(stubs, {("s1", "a"): 10})
    options = Options(DEFAULT_STREAM, "omnistock", "c1", block_ms=10, max_deliveries=3)
    restarted = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
    await restarted.create_group()
    await append(redis, delta("stuck", "s1", "a", -1, T0 + 1), delta("next", "s1", "a", -2, T0 + 2))
    assert len(await crashed_reading(redis, "c1", ">")) == 2
    assert len(await crashed_reading(redis, "c1", "0")) == 2
    assert len(await crashed_reading(redis, "c1", "0", count=1)) == 1
    # when c1 starts again and reads its own pending entries (deliveries 4 and 3)
    await drain(redis, restarted)
    # then the one delivered over 3 times is dead-lettered, not applied; the other applied
    (letter,) = await dead_letters(redis)
    assert (letter["event_id"], letter["dead.reason"]) == (
        "stuck",
        "delivered over 3 times without an answer",
    )
    assert (await level(stubs, "s1", "a")).on_hand == 10 - 2
    counted = restarted.metrics.registry.get_sample_value
    assert counted("omnistock_streams_dead_letters_total", {"reason": "redelivered"}) == 1
    assert counted("omnistock_streams_events_total", {"outcome": "applied"}) == 1


async def crashed_reading(
    redis: aioredis.Redis, name: str, start: str, count: int | None = None
) -> list[Any]:
    """What a consumer of the group that dies before answering does: it reads entries (">":
    new ones, "0": its own pending ones, each read a delivery more), and never
    acknowledges them."""
    got = await redis.xreadgroup("omnistock", name, {DEFAULT_STREAM: start}, count=count)
    return [entry for _, entries in got for entry in entries]


async def test_lag_and_error_metrics_move(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer, channel: grpc.aio.Channel
) -> None:
    # given 120 entries appended 5 s ago (an entry's id is the time it was appended)
    await seed(stubs, {("s1", "a"): 10})
    appended_at = int(time.time() * 1000) - 5000
    await append(
        redis,
        *[delta(f"l{i}", "s1", "a", 1, T0 + 1 + i) for i in range(120)],
        at=appended_at,
    )
    # when the consumer takes its first batch of 50
    assert await consumer.step() == 50
    # then it measured the lag first: 120 entries not delivered, the oldest 5 s old
    gauge = consumer.metrics.registry.get_sample_value
    oldest = (time.time() * 1000 - appended_at) / 1000
    assert gauge("omnistock_streams_lag") == 120
    assert 5.0 <= gauge("omnistock_streams_lag_seconds") <= oldest
    # and once it has caught up, a consumer looking at the group sees no lag
    await drain(redis, consumer)
    looking = Consumer(redis, pb_grpc.StockServiceStub(channel), consumer.o)
    assert await looking.step() == 0
    gauge = looking.metrics.registry.get_sample_value
    assert (gauge("omnistock_streams_lag"), gauge("omnistock_streams_pending")) == (0, 0)
    assert gauge("omnistock_streams_lag_seconds") == 0
    # a server that cannot be reached, for more tries than max_deliveries: errors counted,
    # nothing acknowledged and nothing dead-lettered (the batch is retried from memory,
    # not delivered again), then applied once the server is back
    await append(redis, delta("late", "s1", "a", 1, T0 + 500))
    options = Options(DEFAULT_STREAM, "omnistock", "c1", block_ms=50, max_deliveries=2)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as dead_end:
        cut_off = Consumer(redis, pb_grpc.StockServiceStub(dead_end), options)
        stop = asyncio.Event()
        run = asyncio.create_task(cut_off.run(stop))
        errors = cut_off.metrics.registry.get_sample_value
        for _ in range(100):  # a bounded poll of a metric
            if (errors("omnistock_streams_errors_total", {"kind": "server"}) or 0) >= 4:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await run
    assert errors("omnistock_streams_errors_total", {"kind": "server"}) >= 4
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] == 1
    assert await redis.xlen(DEAD) == 0
    cut_off.stub = stubs.stock
    await drain(redis, cut_off)
    assert (await level(stubs, "s1", "a")).on_hand == 10 + 120 + 1
    assert await redis.xlen(DEAD) == 0


async def test_entries_pending_at_a_crashed_consumer_are_claimed_by_another(
    stubs: Stubs, redis: aioredis.Redis, channel: grpc.aio.Channel
) -> None:
    # given 30 entries that a consumer of the group read and died before answering
    await seed(stubs, {("s1", "a"): 0})
    await append(redis, *[delta(f"x{i}", "s1", "a", 1, T0 + 1 + i) for i in range(30)])
    options = Options(DEFAULT_STREAM, "omnistock", "c2", block_ms=10, claim_idle_ms=100)
    other = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
    await other.create_group()
    assert len(await crashed_reading(redis, "gone", ">", count=30)) == 30
    # when another consumer of the group runs
    await drain(redis, other)
    # then it claims them once they have been idle 100 ms, and applies each once
    assert (await level(stubs, "s1", "a")).on_hand == 30
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] == 0
    claimed = other.metrics.registry.get_sample_value
    assert claimed("omnistock_streams_events_total", {"outcome": "applied"}) == 30


class Relay:
    """A TCP relay on loopback between a gRPC client and its server. Once armed
    (`hold_answers_from_next_request`), the first request the client sends after that
    passes to the server, and from then on nothing the server sends passes back: the
    server applies that request and its client never hears of it. (A request of the
    adapter is kilobytes of events; what else a client sends on its own, HTTP/2 settings,
    pings and window updates, is a few bytes.)"""

    REQUEST_BYTES = 1000

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.armed = False
        self.answers = asyncio.Event()
        self.answers.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def hold_answers_from_next_request(self) -> None:
        self.armed = True

    @property
    def holding(self) -> bool:
        return not self.answers.is_set()

    async def serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        server, to_server = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [to_client, to_server]
        up, down = self.requests(client, to_server), self.replies(server, to_client)
        self.tasks |= {asyncio.ensure_future(up), asyncio.ensure_future(down)}

    async def requests(self, client: asyncio.StreamReader, to: asyncio.StreamWriter) -> None:
        while data := await client.read(65536):
            if self.armed and len(data) >= self.REQUEST_BYTES:
                self.answers.clear()  # before the request reaches the server
            to.write(data)
            await to.drain()
        to.close()

    async def replies(self, server: asyncio.StreamReader, to: asyncio.StreamWriter) -> None:
        while data := await server.read(65536):
            await self.answers.wait()
            to.write(data)
            await to.drain()
        to.close()


@pytest.mark.parametrize("numbered", [False, True], ids=["by-event-id", "by-sequence"])
async def test_a_consumer_killed_mid_batch_applies_every_event_exactly_once_after_restart(
    stubs: Stubs,
    redis: aioredis.Redis,
    server: Omnistock,
    one_redis_url: str,
    project_root: Path,
    numbered: bool,
) -> None:
    # given 20,000 deltas on the stream, told apart by their ids, or numbered by their
    # source at each location; and the adapter's process reaching the server through a relay
    n = 20_000
    await seed(stubs, {("s1", "a"): 0, ("s2", "a"): 0})

    def entry(j: int) -> dict[str, str]:
        by_number: dict[str, str | int] = {"source": "till", "sequence": 1 + j // 2}
        return delta(
            f"k{j}", f"s{1 + j % 2}", "a", 1, T0 + 1 + j, **(by_number if numbered else {})
        )

    for i in range(0, n, 1000):
        await append(redis, *[entry(j) for j in range(i, i + 1000)])
    await redis.xgroup_create(DEFAULT_STREAM, "omnistock", "0")

    async def start(port: int) -> asyncio.subprocess.Process:
        command = [
            sys.executable, "-m", "adapters.streams",
            "--redis-url", one_redis_url,
            "--server", f"127.0.0.1:{port}",
            "--consumer", "till-feed", "--batch", "200", "--metrics-port", "0",
        ]  # fmt: skip
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=project_root,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(project_root)},
        )

    def events(outcome: str) -> float:
        got = server.metrics.registry.get_sample_value(
            "omnistock_stock_events_total", {"outcome": outcome}
        )
        return got or 0

    async def applied_but_unacknowledged() -> bool:
        """Answers are held, the server has applied every entry delivered, and some are not
        acknowledged (so they never will be: their answer is held)."""
        if not relay.holding:  # first: what is read next is then read after the hold
            return False
        group = await group_state(redis, DEFAULT_STREAM, "omnistock")
        return bool(group["pending"]) and events("applied") - 2 == n - group["lag"]

    async with Relay(server.port) as relay:
        first = await start(relay.port)
        # when, part way through, the answer to the adapter's next batch is held back (it
        # sends a batch only once it has acknowledged the one before), and it is killed once
        # the server has applied that batch
        assert await eventually(lambda: events("applied") > 2 + 1000, within=60)
        relay.hold_answers_from_next_request()
        held = await eventually(applied_but_unacknowledged, within=20)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    at_kill = await group_state(redis, DEFAULT_STREAM, "omnistock")
    assert held, f"no batch was left applied and unacknowledged: {at_kill}"
    assert at_kill["pending"] > 0 and at_kill["lag"] > 0, at_kill
    assert events("duplicate") == 0

    # and it starts again under the same name
    second = await start(server.port)
    assert await eventually(lambda: caught_up(redis, DEFAULT_STREAM, "omnistock"), within=90)
    second.send_signal(signal.SIGTERM)
    assert await second.wait() == 0
    # then every one of the n deltas counted once: none lost, none twice; the batch the
    # server had applied came again and was answered DUPLICATE
    assert (await level(stubs, "s1", "a")).on_hand == n // 2
    assert (await level(stubs, "s2", "a")).on_hand == n // 2
    assert events("applied") == 2 + n
    assert events("duplicate") == at_kill["pending"]
    # and numbered events cost a watermark each location, not an id each event (the one
    # id kept is the seeding count's)
    assert await redis.zcard("{s1}:e") == 1 + (0 if numbered else n // 2)
    assert await redis.hget("{s1}:q", "till") == (str(n // 2).encode() if numbered else None)


async def test_what_every_group_acknowledged_is_trimmed_and_the_depths_are_gauged(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer
) -> None:
    # given 100 entries, applied and acknowledged by the adapter's group, and another group
    # that has read none of them yet
    await seed(stubs, {("s1", "a"): 0})
    await append(redis, *[delta(f"t{i}", "s1", "a", 1, T0 + 1 + i) for i in range(100)])
    await redis.xgroup_create(DEFAULT_STREAM, "audit", "0")
    await drain(redis, consumer)

    async def trim() -> int:
        await consumer.trim(await redis.xinfo_groups(DEFAULT_STREAM))
        return int(await redis.xlen(DEFAULT_STREAM))

    # then nothing is trimmed while the other group has not read it
    assert await trim() == 100
    # nor what it read and has not acknowledged
    got = await redis.xreadgroup("audit", "x", {DEFAULT_STREAM: ">"}, count=10)
    ids = [entry_id for entry_id, _ in got[0][1]]
    assert await trim() == 100
    # once it acknowledges them, they go (and the adapter's gauge says what is left)
    await redis.xack(DEFAULT_STREAM, "audit", *ids)
    assert await trim() == 90
    assert consumer.metrics.registry.get_sample_value("omnistock_streams_length") == 90
    # and when the other group goes, the adapter's acknowledgements are all that count
    await redis.xgroup_destroy(DEFAULT_STREAM, "audit")
    assert await trim() == 0
    assert (await level(stubs, "s1", "a")).on_hand == 100


async def test_dead_letters_are_kept_for_their_days_and_at_most_their_number(
    redis: aioredis.Redis, consumer: Consumer
) -> None:
    now = int(time.time() * 1000)
    day = 86_400_000
    for i, age in enumerate([40, 35, 2, 1, 0]):  # days old
        await redis.xadd(DEAD, {"reason": f"r{i}"}, id=f"{now - age * day}-0")
    consumer.o = dataclasses.replace(consumer.o, dead_letter_days=30, dead_letter_max=0)
    await consumer.trim([])
    assert [f[b"reason"] for _, f in await redis.xrange(DEAD)] == [b"r2", b"r3", b"r4"]
    consumer.o = dataclasses.replace(consumer.o, dead_letter_max=2)
    await consumer.trim([])
    assert [f[b"reason"] for _, f in await redis.xrange(DEAD)] == [b"r3", b"r4"]
    assert consumer.metrics.registry.get_sample_value("omnistock_streams_dead_length") == 2


async def test_dead_letters_replayed_after_the_mapping_is_set_are_applied_once(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer
) -> None:
    # given two entries of a source whose location id the engine cannot map yet, and one
    # that is not a stock event: all three dead-lettered
    await seed(stubs, {("s1", "a"): 10})
    await stubs.stock.SetMappings(
        pb.SetMappingsRequest(
            mappings=[
                pb.Mapping(source="till", kind=pb.MAPPING_KIND_LOCATION, external_id="X", id="s9")
            ]
        )
    )
    await append(
        redis,
        delta("m1", "T-1", "a", -1, T0 + 1, source="till"),
        delta("m2", "T-1", "a", -2, T0 + 2, source="till"),
        {**delta("p1", "s1", "a", -1, T0 + 3), "qty": "lots"},
    )
    await drain(redis, consumer)
    assert len(await dead_letters(redis)) == 3
    # when the mapping is set and the letters about it replayed
    await stubs.stock.SetMappings(
        pb.SetMappingsRequest(
            mappings=[
                pb.Mapping(source="till", kind=pb.MAPPING_KIND_LOCATION, external_id="T-1", id="s1")
            ]
        )
    )
    done = await replay(redis, DEFAULT_STREAM, origin="stream", reason="no till mapping")
    assert (done.replayed, done.still_bad) == (2, [])
    await drain(redis, consumer)
    # then they are applied, once, and only the letter that is still bad stays
    assert (await level(stubs, "s1", "a")).on_hand == 10 - 3
    assert [d["event_id"] for d in await dead_letters(redis)] == ["p1"]
    # replaying everything again changes nothing: the bad entry is dead-lettered anew
    again = await replay(redis, DEFAULT_STREAM)
    await drain(redis, consumer)
    assert again.replayed == 1 and (await level(stubs, "s1", "a")).on_hand == 7
    assert [d["event_id"] for d in await dead_letters(redis)] == ["p1"]


async def test_the_adapter_reaches_a_server_with_principals_by_its_token(
    redis: aioredis.Redis, one_redis_url: str, tmp_path: Path, project_root: Path
) -> None:
    # given a server that lets in only its principals, and an entry on the stream
    app = create_server(
        settings_for(one_redis_url, auth_file=principals_file(tmp_path / "principals.toml"))
    )
    await app.start()
    admin = bearer(ROLES[Role.ADMIN])
    adapter = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs = Stubs(channel)
            await stubs.stock.UpsertLocations(
                pb.UpsertLocationsRequest(locations=[grpc_helpers.location("L1")]), metadata=admin
            )
            await append(redis, delta("tok-1", "L1", "S1", 5, T0 + 1))

            async def on_hand() -> int:
                got = await stubs.availability.GetAvailability(
                    pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"]), metadata=admin
                )
                return got.levels[0].on_hand

            # when the adapter runs with the ingest role's token (from the environment)
            adapter = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters.streams",
                "--redis-url", one_redis_url, "--server", f"127.0.0.1:{app.port}",
                "--metrics-port", "0",
                cwd=project_root,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env={
                    **os.environ, "PYTHONPATH": str(project_root),
                    "OMNISTOCK_TOKEN": ROLES[Role.INGEST],
                },
            )  # fmt: skip
            # then the entry is applied: its calls were let in
            assert await eventually(lambda: _is(on_hand(), 5), within=30)
    finally:
        if adapter is not None:
            adapter.send_signal(signal.SIGTERM)
            await adapter.wait()
        await app.stop(grace=1.0)


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
