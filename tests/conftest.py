"""Shared fixtures: one real Redis-compatible server per test session (the embedded one the
service uses by default, on a free loopback port), flushed before every test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from engine.app import Omnistock, create_server, redis_client
from engine.clock import ManualClock
from engine.domain import Location, LocationType
from engine.embedded import EmbeddedRedis
from engine.metrics import Metrics
from engine.reservations import Reservations, Timing
from engine.settings import Settings
from engine.storage import Storage

BUCKETS = 8  # few buckets, so rows share buckets and scripts meet several rows per key
HOUR_MS = 3_600_000


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_url, 2.0)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def storage(redis: aioredis.Redis) -> Storage:
    s = Storage(
        redis, stock_buckets=BUCKETS, retention_ms=72 * HOUR_MS, event_window_ms=72 * HOUR_MS
    )
    await s.load_scripts()
    return s


@pytest.fixture
def reservations(storage: Storage, clock: ManualClock) -> Reservations:
    return Reservations(
        storage, clock, Timing(default_ttl_ms=60_000, saga_timeout_ms=5_000), Metrics()
    )


def store(location_id: str, lat: float = 51.5, lon: float = -0.12) -> Location:
    return Location(location_id, location_id.title(), LocationType.STORE, lat, lon)


def settings_for(redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "metrics_port": 0,
        "sweep_interval_ms": 50,
        "stock_buckets": BUCKETS,
        "saga_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def server(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Omnistock]:
    app = create_server(settings_for(redis_url))
    await app.start()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def channel(server: Omnistock) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
