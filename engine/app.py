"""Wiring: the embedded or external Redis, storage, the services, health, reflection,
metrics and the sweeper, started and stopped as one. `create_server(settings)` is what
server.py and the tests use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import hiredis
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from engine import demo
from engine.api.availability import AvailabilityService
from engine.api.edge import Edge, Gate
from engine.api.listener import enable_reflection, grpc_server, limits_of, listen, load_principals
from engine.api.reservations import ReservationService
from engine.api.sourcing import SourcingService
from engine.api.stock import StockService
from engine.domain.auth import AuthFileError
from engine.domain.clock import Clock, SystemClock
from engine.domain.model import EventKind, StockEvent
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.settings import Settings
from engine.store.embedded import EmbeddedRedis
from engine.store.probe import StoreProbe
from engine.store.storage import Storage
from engine.store.watch import WatchHub
from engine.usecases.allocation import Allocator
from engine.usecases.ingest import Ingest
from engine.usecases.locations import LocationRegistry
from engine.usecases.planner import Planner
from engine.usecases.reservations import CartCaps, Reservations, Timing
from engine.usecases.sweeper import Sweeper

log = logging.getLogger(__name__)
SERVICES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())


class _PackedByHiredis:
    """Packs commands with hiredis (C) instead of redis-py's Python loop, which otherwise
    costs more than anything else in a read of many rows (bench/RESULTS.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " in first:  # 'CLUSTER INFO' and the like
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


def redis_client(
    url: str, timeout: float, max_connections: int = 128, retries: int = 1
) -> aioredis.Redis:
    """Fails fast when Redis is away (UNAVAILABLE within the deadline), retrying `retries`
    times (once): every script is idempotent, so a retried call never applies twice."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries),
        health_check_interval=30,
    )
    base = pool.connection_class  # plain, TLS or unix socket, as the url says
    pool.connection_class = type(f"Packed{base.__name__}", (_PackedByHiredis, base), {})
    return aioredis.Redis.from_pool(pool)


async def connect(
    url: str, socket_timeout: float, max_connections: int = 128, retries: int = 1
) -> aioredis.Redis | RedisCluster:
    """A client for the server at `url`, or for its whole cluster when it is a node of a
    Redis Cluster (any node will do as the seed): the server is asked which it is."""
    timeout = socket_timeout
    client = redis_client(url, timeout, max_connections, retries)
    info = await client.info("cluster")
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    cluster = cluster_client(url, timeout, max_connections, retries)
    await cluster.initialize()
    return cluster


def cluster_client(url: str, timeout: float, max_connections: int, retries: int) -> RedisCluster:
    return RedisCluster.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries),
        health_check_interval=30,
    )


def probe_client(url: str, like: aioredis.Redis | RedisCluster, timeout: float) -> Any:
    """The health probe's own connection (per node), of the kind of `like`, not retried:
    its timeout is the verdict. Connected on its first ping."""
    if isinstance(like, RedisCluster):
        return cluster_client(url, timeout, max_connections=1, retries=0)
    return redis_client(url, timeout, max_connections=1, retries=0)


class Omnistock:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.embedded: EmbeddedRedis | None = None
        self.planner: Planner | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_server: Any = None

    async def start(self) -> None:
        url = self.settings.redis_url
        if not url:
            self.embedded = EmbeddedRedis(
                self.settings.state_dir, appendfsync=self.settings.appendfsync
            )
            await asyncio.to_thread(self.embedded.start)
            url = self.embedded.url
        self.redis = await connect(
            url, self.settings.redis_timeout_seconds, self.settings.redis_max_connections
        )
        self.probe_redis = probe_client(url, self.redis, self.settings.redis_probe_timeout_seconds)
        self.storage = Storage.from_settings(self.redis, self.settings, probe=self.probe_redis)
        await self.storage.load_scripts()
        self.locations = LocationRegistry(self.storage)
        self.hub = WatchHub(self.redis, self.storage.cluster)
        await self.locations.reload()
        timing = Timing(
            default_ttl_ms=int(self.settings.hold_ttl_seconds * 1000),
            saga_timeout_ms=int(self.settings.saga_timeout_seconds * 1000),
        )
        caps = CartCaps(
            max_ttl_ms=int(self.settings.storefront_max_ttl_seconds * 1000),
            max_units=self.settings.storefront_max_held_units,
        )
        self.reservations = Reservations(self.storage, self.clock, timing, self.metrics, caps)
        if self.settings.demo and not self.locations.by_id:
            await load_demo(self.storage, self.locations, self.clock)
        self.gate = Gate(load_principals(self.settings), limits_of(self.settings))
        self.server = grpc_server(self.settings, Edge(self.gate, self.metrics))
        self._add_services()
        self.port = listen(self.server, self.settings)
        await self.server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        sweeper = Sweeper(
            self.storage,
            self.reservations,
            self.locations,
            self.clock,
            self.metrics,
            self.settings.sweep_interval_ms,
        )
        probe = StoreProbe(
            self.storage,
            self.metrics,
            self._set_health,
            interval=self.settings.redis_probe_interval_seconds,
            failures=self.settings.redis_probe_failures,
        )
        self._tasks = [asyncio.create_task(sweeper.run()), asyncio.create_task(probe.run())]
        if self.settings.auth_file:
            self._tasks.append(asyncio.create_task(self._follow_auth_file()))
        if self.embedded is not None:
            restarted = self.metrics.store_restarts.inc
            self._tasks.append(asyncio.create_task(self.embedded.supervise(restarted)))
        if self.settings.metrics_port:
            self._metrics_server = start_http_server(
                self.settings.metrics_port, addr="127.0.0.1", registry=self.metrics.registry
            )

    def _add_services(self) -> None:
        m = self.metrics
        pb_grpc.add_AvailabilityServiceServicer_to_server(
            AvailabilityService(self.storage, self.locations, m, self.hub), self.server
        )
        pb_grpc.add_ReservationServiceServicer_to_server(
            ReservationService(self.reservations, self.locations, m), self.server
        )
        self.planner = Planner(self.settings.plan_workers, waiting=4 * self.settings.plan_workers)
        allocator = Allocator(self.storage, self.locations, self.reservations, self.planner)
        pb_grpc.add_SourcingServiceServicer_to_server(
            SourcingService(allocator, m, self.settings), self.server
        )
        self.stock_service = StockService(
            Ingest(self.storage, self.locations, m, self.clock.now_ms),
            self.locations,
            m,
            zero_missing=self.settings.count_missing == "zero",
            count_lines_held=self.settings.count_lines_held,
            count_idle_seconds=self.settings.count_idle_seconds,
            ingest_rate=self.settings.ingest_rate,
        )
        pb_grpc.add_StockServiceServicer_to_server(self.stock_service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        enable_reflection(self.server, (*names, reflection.SERVICE_NAME))

    def reload_auth(self) -> None:
        """Reads the auth file again (SIGHUP, or a change); one that does not load is
        logged and the principals before it stay."""
        try:
            self.gate.principals = load_principals(self.settings)
        except AuthFileError as exc:
            log.error("auth file not reloaded, the principals before it stay: %s", exc)
            return
        principals = self.gate.principals
        log.info("auth file reloaded: %d principals", len(principals.by_name if principals else ()))

    async def _follow_auth_file(self) -> None:
        path = self.settings.auth_file
        assert path is not None
        seen = path.stat().st_mtime_ns
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError):
                changed = path.stat().st_mtime_ns
                if changed != seen:
                    seen = changed
                    self.reload_auth()

    async def _set_health(self, serving: bool) -> None:
        """Health follows the store probe: NOT_SERVING while Redis is down."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: NOT_SERVING first, drain in-flight calls, then stop the store."""
        await self.health.enter_graceful_shutdown()
        await self.hub.close()  # open watch streams end now, not at the end of the grace
        await self.server.stop(grace)
        pending = set(self._tasks)
        while pending:  # Python 3.11's wait_for can swallow a cancel (gh-86296): send it again
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        if self._metrics_server is not None:
            http, _thread = self._metrics_server
            http.shutdown()
            http.server_close()
        for client in (self.redis, self.probe_redis):
            with contextlib.suppress(Exception):
                await client.aclose()
        if self.planner is not None:
            self.planner.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


def create_server(settings: Settings, clock: Clock | None = None) -> Omnistock:
    return Omnistock(settings, clock)


async def load_demo(storage: Storage, locations: LocationRegistry, clock: Clock) -> None:
    """Counts every demo row in as COUNT events (the one way stock enters), a few batches in
    flight at once, logging progress; the locations go in last, so a load cut short is redone
    at the next start (the events are idempotent)."""
    started = time.perf_counter()
    locs = demo.demo_locations()
    now = clock.now_ms()
    batches: list[tuple[str, list[StockEvent]]] = []
    current: dict[str, list[StockEvent]] = {}
    for location, sku, qty in demo.demo_stock(locs, demo.demo_skus()):
        event = StockEvent(f"demo:{location}:{sku}", location, sku, EventKind.COUNT, qty, now - 1)
        current.setdefault(location, []).append(event)
        if len(current[location]) >= 500:
            batches.append((location, current.pop(location)))
    batches += current.items()
    total = sum(len(events) for _, events in batches)
    done, gate, next_report = 0, asyncio.Semaphore(4), 0.25

    async def apply(location: str, events: list[StockEvent]) -> None:
        nonlocal done, next_report
        async with gate:
            await storage.apply_events(location, events, now)
        done += len(events)
        if done / total >= next_report:
            log.info("demo data: %d of %d stock rows loaded", done, total)
            next_report += 0.25

    await asyncio.gather(*(apply(loc, events) for loc, events in batches))
    await locations.upsert(locs)
    elapsed = time.perf_counter() - started
    log.info("demo data: %d locations, %d stock rows in %.1fs", len(locs), total, elapsed)
