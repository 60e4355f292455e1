"""What the peers share: the private Redis-compatible server with omnistock's storage over
it, the event loop choice, and the latency summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from hdrh.histogram import HdrHistogram

from engine.app import storage_of
from engine.domain.clock import SystemClock
from engine.domain.model import EventKind, Location, LocationType, StockEvent, StockRow
from engine.metrics import Metrics
from engine.settings import Settings
from engine.store.connect import redis_client
from engine.store.embedded import EmbeddedRedis, find_binary
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.parts import Timing
from engine.usecases.reservations import Reservations

T = TypeVar("T")

# The hot row every peer works on.
LOCATION = "peer-store-00000"
SKU = "PEER-0000000"


@dataclass(frozen=True)
class Peer:
    """One `python -m bench.peers <name>` command."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]  # the result, as JSON-able data
    summary: Callable[[dict[str, Any]], str]  # the one-line summary of a result
    ok: Callable[[dict[str, Any]], bool]  # False when a check failed (exit status 1)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, where SIGTERM cancels the run as Ctrl-C does, so that every private
    server is stopped and its files deleted on the way out."""

    async def guarded() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(guarded())


def install_event_loop() -> str:
    """uvloop when installed, as bench/runner.py does, so every peer runs on the same loop."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def latency_ms(hist: HdrHistogram) -> dict[str, float]:
    """Percentiles of a microsecond histogram, in milliseconds."""
    out = {
        name: hist.get_value_at_percentile(p) / 1000
        for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
    }
    out["max"] = hist.get_max_value() / 1000
    out["mean"] = round(hist.get_mean_value() / 1000, 3)
    return out


@dataclass
class PrivateRedis:
    """A private embedded server, a client built as the engine builds it, and the engine's
    storage over that client (with the engine's default settings)."""

    server: EmbeddedRedis
    client: aioredis.Redis
    storage: Storage
    settings: Settings

    def reservations(self) -> Reservations:
        timing = Timing(
            default_ttl_ms=int(self.settings.hold_ttl_seconds * 1000),
            saga_timeout_ms=int(self.settings.saga_timeout_seconds * 1000),
        )
        return Reservations(
            self.storage, LocationRegistry(self.storage), SystemClock(), timing, Metrics()
        )

    async def seed(self, on_hand: int) -> None:
        """Makes the hot row's store known, then counts the row in, as a store system would
        (a COUNT event)."""
        store = Location(LOCATION, LOCATION, LocationType.STORE, 51.5, -0.12)
        await LocationRegistry(self.storage).upsert([store])
        now = SystemClock().now_ms()
        event_id = f"peer-seed-{uuid.uuid4().hex}"
        count = StockEvent(event_id, LOCATION, SKU, EventKind.COUNT, on_hand, now - 1)
        await self.storage.apply_events(LOCATION, [count], now)

    async def hot_row(self) -> StockRow:
        (row,) = await self.storage.rows([(LOCATION, SKU)])
        return row

    def describe(self) -> dict[str, Any]:
        return {
            "server": find_binary().name,
            "appendfsync": self.server.appendfsync,
            "client_pool": "engine.store.connect.redis_client (BlockingConnectionPool)",
        }


@contextlib.asynccontextmanager
async def running(start: Callable[[], None], stop: Callable[[], None]) -> AsyncIterator[None]:
    """A blocking start run in a thread, and its stop always run after, even when the run
    is cancelled while the start is still going (the start then finishes first)."""
    starting = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        await asyncio.shield(starting)
        yield
    finally:
        with contextlib.suppress(Exception):
            await starting
        await asyncio.to_thread(stop)


@contextlib.asynccontextmanager
async def private_redis(appendfsync: str) -> AsyncIterator[PrivateRedis]:
    settings = Settings()
    state = Path(tempfile.mkdtemp(prefix="omnistock-peer-"))
    server = EmbeddedRedis(state, appendfsync=appendfsync)

    def stop() -> None:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)

    async with running(server.start, stop):
        client = redis_client(server.url, 5.0)
        storage = storage_of(client, settings)
        await storage.load_scripts()
        try:
            yield PrivateRedis(server, client, storage, settings)
        finally:
            await client.aclose()


class Progress:
    """A live progress line on stderr: done, rate over the last second, errors."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        started, last = time.perf_counter(), 0
        while True:
            await asyncio.sleep(1.0)
            rate, last = self.done - last, self.done
            line = (
                f"\r{self.label} [{time.perf_counter() - started:5.1f}s] {self.done:>10,} done"
                f"  {rate:>9,}/s  errors {self.errors:,}"
            )
            print(line, end="", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            print(file=sys.stderr, flush=True)
