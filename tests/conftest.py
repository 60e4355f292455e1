"""Shared fixtures: one real Redis-compatible server per test session (the embedded one the
service uses by default, on a free loopback port), flushed before every test; and, for the
tests marked ON_BOTH, a real local Redis Cluster of three primaries as well: those tests run
once on each."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
import uvloop
from redis.asyncio.cluster import RedisCluster

from engine.app import Omnistock, create_server
from engine.domain.clock import Clock, ManualClock
from engine.domain.model import Location, LocationType
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.settings import Settings
from engine.store.connect import connect
from engine.store.embedded import EmbeddedRedis
from engine.store.localcluster import LocalCluster
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.parts import Timing
from engine.usecases.reservations import Reservations
from engine.usecases.sweeper import Sweeper

from .grpc_helpers import Stubs, location
from .processes import ServerProcess

BUCKETS = 8  # few buckets, so rows share buckets and scripts meet several rows per key
HOUR_MS = 3_600_000


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def one_redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


_session_loop: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(scope="session", autouse=True)
async def session_loop() -> AsyncIterator[None]:
    """The loop the tests run on, known to pytest_runtest_call below."""
    _session_loop.append(asyncio.get_running_loop())
    yield
    _session_loop.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test that fails leaves none of the tasks it started running: cancelled at once,
    they do not run on into its fixtures' teardown and the next tests (against closed
    clients, which reconnect) and cannot hang the loop's close at the session's end."""
    loop = _session_loop[0] if _session_loop else None
    before = asyncio.all_tasks(loop) if loop is not None else set()
    try:
        return (yield)
    except BaseException:
        if loop is not None:
            for task in asyncio.all_tasks(loop) - before:
                task.cancel()
        raise


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The tests run on the server's own loop (server.py runs on uvloop)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster.url
    cluster.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis; or, in a test marked ON_BOTH, each of one Redis and the cluster in turn."""
    return str(request.getfixturevalue(getattr(request, "param", "one_redis_url")))


ON_BOTH = pytest.mark.parametrize(
    "redis_url", ["one_redis_url", "cluster_url"], ids=["one-redis", "cluster"], indirect=True
)


async def all_keys(redis: aioredis.Redis | RedisCluster, pattern: str = "*") -> list[bytes]:
    """Every key matching `pattern`, sorted (on a cluster: of every node)."""
    return sorted([key async for key in redis.scan_iter(match=pattern, count=1000)])


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis | RedisCluster]:
    client = await connect(redis_url, 2.0)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def storage(redis: aioredis.Redis | RedisCluster) -> Storage:
    s = Storage(
        redis, stock_buckets=BUCKETS, retention_ms=72 * HOUR_MS, event_window_ms=72 * HOUR_MS
    )
    await s.load_scripts()
    return s


@pytest.fixture
async def other(redis: aioredis.Redis | RedisCluster, redis_url: str) -> AsyncIterator[Storage]:
    """The store as another server process writes it: a client of its own (no fence of a
    read cache on `storage`), after `redis` has flushed it."""
    client = await connect(redis_url, 2.0)
    theirs = Storage(client, stock_buckets=BUCKETS, retention_ms=HOUR_MS, event_window_ms=HOUR_MS)
    await theirs.load_scripts()
    yield theirs
    await client.aclose()


@pytest.fixture
def reservations(storage: Storage, clock: ManualClock) -> Reservations:
    timing = Timing(default_ttl_ms=60_000, saga_timeout_ms=5_000)
    return Reservations(storage, LocationRegistry(storage), clock, timing, Metrics())


def store(location_id: str, lat: float = 51.5, lon: float = -0.12) -> Location:
    return Location(location_id, location_id.title(), LocationType.STORE, lat, lon)


async def register(reservations: Reservations, *location_ids: str) -> None:
    """Makes the locations known, as a Reserve needs them to be."""
    await reservations.locations.upsert([store(loc) for loc in location_ids])


async def sweeper_of(
    storage: Storage, reservations: Reservations, clock: ManualClock, *location_ids: str
) -> Sweeper:
    """A sweeper of these locations, registered first (as the service requires)."""
    registry = LocationRegistry(storage)
    await registry.upsert([store(location_id) for location_id in location_ids])
    return Sweeper(storage, reservations, registry, clock, Metrics(), interval_ms=50)


def settings_for(redis_url: str, **overrides: object) -> Settings:
    """Settings for a test's server. The band crossings' detector is off unless a test turns
    it on (tests/test_band_alerts.py): working behind the calls, it writes band keys and
    alerts that a test of something else would find in its snapshots and alert lists."""
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "metrics_port": 0,
        "sweep_interval_ms": 50,
        "stock_buckets": BUCKETS,
        "saga_timeout_seconds": 2.0,
        "no_band_alerts": True,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def served(
    redis_url: str, clock: Clock | None = None, **overrides: object
) -> AsyncIterator[tuple[Omnistock, Stubs]]:
    """A server of its own with these settings (and clock), and stubs over a channel to it,
    with the location L1 made; stopped on leaving."""
    app = create_server(settings_for(redis_url, **overrides), clock)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs = Stubs(channel)
            await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("L1")]))
            yield app, stubs
    finally:
        await app.stop(grace=1.0)


@pytest.fixture
async def server(redis: aioredis.Redis | RedisCluster, redis_url: str) -> AsyncIterator[Omnistock]:
    app = create_server(settings_for(redis_url))
    await app.start()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def channel(server: Omnistock) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., ServerProcess]]:
    """Makes `python server.py` children; each is stopped (or killed) at teardown."""
    made: list[ServerProcess] = []

    def make(*args: str, keep_port: bool = False) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"server-{len(made)}", *args, keep_port=keep_port)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        await proc.close()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
