"""The Redis Streams adapter against a real server and a real Redis-compatible store: in
process for the rules, and as its own process, killed mid-batch, for exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from adapters.config import DEFAULT_STREAM, dead_letter_stream, entry_fields
from adapters.streams.consumer import Consumer, Options
from engine.app import Omnistock
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

from . import grpc_helpers
from .grpc_helpers import T0, Stubs, count, level, line, seed

DEAD = dead_letter_stream(DEFAULT_STREAM)


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
async def consumer(redis: aioredis.Redis, channel: grpc.aio.Channel) -> AsyncIterator[Consumer]:
    options = Options(DEFAULT_STREAM, "omnistock", "c1", batch=50, block_ms=50, claim_idle_ms=200)
    c = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
    await c.create_group()
    yield c
    await c._close_call()


def delta(event_id: str, loc: str, sku: str, qty: int, t: int, **extra: str) -> dict[str, str]:
    """A stock DELTA as the fields of an ingest stream entry."""
    return entry_fields(grpc_helpers.delta(event_id, loc, sku, qty, t, **extra))


async def append(redis: aioredis.Redis, *entries: dict[str, str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(DEFAULT_STREAM, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def drain(c: Consumer) -> None:
    while await c.step():
        pass


async def dead_letters(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(DEAD)
    ]


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
    await drain(consumer)
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
    await drain(consumer)
    assert (await level(stubs, "s1", "a")).on_hand == 6
    got = consumer.metrics.registry.get_sample_value(
        "omnistock_streams_events_total", {"outcome": "echo"}
    )
    assert got == 1


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
    await drain(consumer)
    assert (await level(stubs, "s1", "a")).on_hand == 7
    letters = await dead_letters(redis)
    assert [d["event_id"] for d in letters] == ["p1", "p2", "p3"]
    assert letters[0]["dead.reason"] == "kind: must be COUNT or DELTA, got 'SOLD'"
    assert letters[1]["dead.reason"] == "qty: must be an integer, got 'lots'"
    assert "unknown location 'nowhere'" in letters[2]["dead.reason"]
    dead = consumer.metrics.registry.get_sample_value
    assert dead("omnistock_streams_dead_letters_total", {"reason": "unparsable"}) == 2
    assert dead("omnistock_streams_dead_letters_total", {"reason": "rejected"}) == 1
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] == 0


async def test_an_entry_that_never_gets_an_answer_is_dead_lettered_after_max_deliveries(
    stubs: Stubs, redis: aioredis.Redis, channel: grpc.aio.Channel
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await append(redis, delta("stuck", "s1", "a", -1, T0 + 1))
    options = Options(DEFAULT_STREAM, "omnistock", "c1", block_ms=10, max_deliveries=3)
    stuck = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
    await stuck.create_group()
    await stuck._read_new()  # delivered once, then the consumer "crashes" before answering
    for _ in range(2):
        stuck._recovering = True
        assert len(await stuck._own_pending()) == 1  # delivered again: 2, then 3 times
    stuck._recovering = True
    assert await stuck._own_pending() == []  # a 4th delivery: dead-lettered instead
    (letter,) = await dead_letters(redis)
    assert letter["dead.reason"] == "delivered over 3 times without an answer"
    assert (await level(stubs, "s1", "a")).on_hand == 10


async def test_lag_and_error_metrics_move(
    stubs: Stubs, redis: aioredis.Redis, consumer: Consumer
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await append(redis, *[delta(f"l{i}", "s1", "a", 1, T0 + 1 + i) for i in range(120)])
    await consumer._watch_lag()
    gauge = consumer.metrics.registry.get_sample_value
    assert gauge("omnistock_streams_lag") == 120
    assert gauge("omnistock_streams_lag_seconds") >= 0
    await drain(consumer)
    consumer._lag_at = float("-inf")
    await consumer._watch_lag()
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
    while await cut_off.step():
        pass
    await cut_off._close_call()
    assert (await level(stubs, "s1", "a")).on_hand == 10 + 120 + 1
    assert await redis.xlen(DEAD) == 0


async def test_entries_pending_at_a_crashed_consumer_are_claimed_by_another(
    stubs: Stubs, redis: aioredis.Redis, channel: grpc.aio.Channel
) -> None:
    await seed(stubs, {("s1", "a"): 0})
    await append(redis, *[delta(f"x{i}", "s1", "a", 1, T0 + 1 + i) for i in range(30)])
    stub = pb_grpc.StockServiceStub(channel)
    crashed = Consumer(redis, stub, Options(DEFAULT_STREAM, "omnistock", "gone", batch=30))
    await crashed.create_group()
    assert len(await crashed._read_new()) == 30  # delivered, never answered
    other = Consumer(
        redis, stub, Options(DEFAULT_STREAM, "omnistock", "c2", block_ms=10, claim_idle_ms=100)
    )
    await asyncio.sleep(0.15)
    await drain(other)
    assert (await level(stubs, "s1", "a")).on_hand == 30
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] == 0
    await other._close_call()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]


async def stopped(pid: int) -> None:
    """Returns once the process is stopped (state T in /proc): SIGSTOP is not synchronous."""
    for _ in range(1000):
        if process_state(pid) == "T":
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


async def test_a_consumer_killed_mid_batch_applies_every_event_exactly_once_after_restart(
    stubs: Stubs, redis: aioredis.Redis, server: Omnistock, one_redis_url: str, project_root: Path
) -> None:
    n = 20_000
    await seed(stubs, {("s1", "a"): 0, ("s2", "a"): 0})
    for i in range(0, n, 1000):
        await append(
            redis,
            *[delta(f"k{j}", f"s{1 + j % 2}", "a", 1, T0 + 1 + j) for j in range(i, i + 1000)],
        )
    command = [
        sys.executable, "-m", "adapters.streams",
        "--redis-url", one_redis_url,
        "--server", f"127.0.0.1:{server.port}",
        "--consumer", "till-feed", "--batch", "200", "--metrics-port", "0",
    ]  # fmt: skip

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=project_root,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(project_root)},
        )

    def applied() -> float:
        got = server.metrics.registry.get_sample_value(
            "omnistock_stock_events_total", {"outcome": "applied"}
        )
        return got or 0

    await redis.xgroup_create(DEFAULT_STREAM, "omnistock", "0")
    first = await start()
    # kill it while it has entries delivered and not yet acknowledged, part way through:
    # frozen first (SIGSTOP), so that what is pending when looked at is pending when killed
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if applied() > 2 + 1000:
            first.send_signal(signal.SIGSTOP)
            await stopped(first.pid)
            if (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"]:
                break
            first.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.002)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert (await redis.xpending(DEFAULT_STREAM, "omnistock"))["pending"] > 0
    assert applied() < 2 + n

    second = await start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        info = (await redis.xinfo_groups(DEFAULT_STREAM))[0]
        if info["pending"] == 0 and info["lag"] == 0:
            break
        await asyncio.sleep(0.05)
    second.send_signal(signal.SIGTERM)
    assert await second.wait() == 0
    # every one of the n +1 deltas counted once: none lost, none twice
    assert (await level(stubs, "s1", "a")).on_hand == n // 2
    assert (await level(stubs, "s2", "a")).on_hand == n // 2
    assert applied() == 2 + n
