"""Wiring: the embedded or external Redis, storage, the services, health, reflection,
metrics, the sweeper and the band crossings' detector, started and stopped as one.
`create_server(settings)` is what server.py and the tests use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import start_http_server

from engine import demo, demo_supply
from engine.api.availability import AvailabilityService
from engine.api.edge import Edge, Gate
from engine.api.listener import (
    Health,
    add_services,
    grpc_server,
    limits_of,
    listen,
    load_principals,
)
from engine.api.operator import OperatorService
from engine.api.reservations import ReservationService
from engine.api.sourcing import SourcingService
from engine.api.stock import StockService
from engine.domain.auth import AuthFileError
from engine.domain.clock import Clock, SystemClock
from engine.metrics import Metrics
from engine.settings import Settings
from engine.store.connect import connect, probe_client
from engine.store.embedded import EmbeddedRedis
from engine.store.netview import NetworkView
from engine.store.probe import StoreProbe
from engine.store.rowcache import RowCache, RowReader
from engine.store.storage import Storage
from engine.store.watch import WatchHub
from engine.usecases.allocation import Allocator
from engine.usecases.availability import Availability
from engine.usecases.bandalerts import BandAlerts
from engine.usecases.ingest import Ingest
from engine.usecases.locations import LocationRegistry
from engine.usecases.networks import Networks
from engine.usecases.operators import Operators
from engine.usecases.parts import CartCaps, Timing
from engine.usecases.planner import Planner
from engine.usecases.reservations import Reservations
from engine.usecases.returns import Returns
from engine.usecases.supply import Supplies
from engine.usecases.sweeper import Sweeper
from engine.usecases.transfers import Transfers

log = logging.getLogger(__name__)


class Omnistock:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.embedded: EmbeddedRedis | None = None
        self.planner: Planner | None = None
        self.health = Health()
        self.port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_server: Any = None
        self._unfollow_gc: Callable[[], None] = lambda: None
        self.cache: RowCache | None = None
        self.band_alerts: BandAlerts | None = None
        self.view: NetworkView | None = None
        self.gate: Gate | None = None  # made by start, from the auth file as it is then

    async def start(self) -> None:
        url, self.embedded = await store_of(self.settings)
        self.redis = await connect(
            url, self.settings.redis_timeout_seconds, self.settings.redis_max_connections
        )
        self.probe_redis = await probe_client(
            url, self.redis, self.settings.redis_probe_timeout_seconds
        )
        self.storage = storage_of(self.redis, self.settings, probe=self.probe_redis)
        await self.storage.load_scripts()
        await self.storage.migrate()
        self.locations = LocationRegistry(self.storage)
        self.hub = WatchHub(self.redis, self.storage.cluster)
        if self.settings.read_cache_rows:
            self.cache = RowCache(
                self.storage,
                self.metrics,
                max_rows=self.settings.read_cache_rows,
                max_lag=self.settings.read_cache_max_lag_ms / 1000,
                dead_after=self.settings.redis_timeout_seconds,
            )
            await self.cache.start()
        if self.settings.network_view_rows:
            self.view = NetworkView(
                self.storage,
                self.metrics,
                max_cells=self.settings.network_view_rows,
                max_lag=self.settings.read_cache_max_lag_ms / 1000,
                dead_after=self.settings.redis_timeout_seconds,
            )
            await self.view.start()
        self.storage.told = tuple(c.wrote for c in (self.cache, self.view) if c is not None)
        await self.locations.reload()
        timing = Timing(
            default_ttl_ms=int(self.settings.hold_ttl_seconds * 1000),
            saga_timeout_ms=int(self.settings.saga_timeout_seconds * 1000),
        )
        caps = CartCaps(
            max_ttl_ms=int(self.settings.storefront_max_ttl_seconds * 1000),
            max_units=self.settings.storefront_max_held_units,
        )
        self.reservations = Reservations(
            self.storage, self.locations, self.clock, timing, self.metrics, caps
        )
        await self.reservations.channels.fresh()  # read once here, then followed
        self.networks = Networks(
            self.storage, self.locations, self.reservations.channels, self.metrics, self.view
        )
        self.returns = Returns(
            self.storage,
            self.locations,
            self.metrics,
            self.clock.now_ms,
            bundles=self.reservations.channels.table,
        )
        if self.settings.demo and not self.locations.by_id:
            await demo.load(
                self.storage, self.locations, self.clock, self.reservations.channels, self.networks
            )
            await demo.load_returns(self.storage, self.reservations, self.returns, self.clock)
            await demo_supply.load_preorder(self.storage, self.reservations, self.clock)
        self.gate = gate = Gate(load_principals(self.settings), limits_of(self.settings))
        self.server = grpc_server(self.settings, Edge(gate, self.metrics))
        self._add_services()
        self.port = listen(self.server, self.settings)
        await self.server.start()
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
            self.health.set,
            interval=self.settings.redis_probe_interval_seconds,
            failures=self.settings.redis_probe_failures,
        )
        self._tasks = [
            asyncio.create_task(sweeper.run()),
            asyncio.create_task(probe.run()),
            asyncio.create_task(self.sources.run()),
            asyncio.create_task(self.reservations.channels.follow()),
        ]
        if not self.settings.no_band_alerts:
            self.band_alerts = BandAlerts(
                self.storage,
                self.locations,
                self.reservations.channels,
                self.metrics,
                WatchHub(self.redis, self.storage.cluster),
                self.clock,
            )
            await self.band_alerts.start()
        if self.settings.auth_file:
            self._tasks.append(asyncio.create_task(self._follow_auth_file()))
        if self.embedded is not None:
            restarted = self.metrics.store_restarts.inc
            self._tasks.append(asyncio.create_task(self.embedded.supervise(restarted)))
        self._unfollow_gc = self.metrics.follow_gc()
        if self.settings.metrics_port:
            self._metrics_server = start_http_server(
                self.settings.metrics_port, addr="127.0.0.1", registry=self.metrics.registry
            )
        await self.health.set(serving=True)  # last: SERVING means all of it runs

    def _add_services(self) -> None:
        m = self.metrics
        self.planner = Planner(self.settings.plan_workers, waiting=4 * self.settings.plan_workers)
        allocator = Allocator(self.storage, self.locations, self.reservations, self.planner)
        reader: RowReader = self.cache or self.storage
        availability = Availability(
            self.storage, self.locations, reader, self.reservations.channels
        )
        ingest = Ingest(
            self.storage,
            self.locations,
            m,
            self.clock.now_ms,
            max_skew_ms=self.settings.max_clock_skew_ms,
            bundles=self.reservations.channels.table,
        )
        self.sources = ingest.sources
        networks = self.networks
        self.stock_service = StockService(
            ingest,
            availability,
            self.locations,
            self.reservations.channels,
            networks,
            m,
            zero_missing=self.settings.count_missing == "zero",
            count_lines_held=self.settings.count_lines_held,
            count_idle_seconds=self.settings.count_idle_seconds,
            ingest_rate=self.settings.ingest_rate,
            returns=self.returns,
        )
        supplies = Supplies(self.storage, self.locations, networks, self.clock, m)
        self.stock_service.supplies = supplies
        self.stock_service.transfers = Transfers(self.storage, self.locations, self.clock, m)
        self.availability_service = AvailabilityService(
            availability,
            reader,
            self.locations,
            m,
            self.hub,
            networks,
            listed_rows=self.settings.read_cache_rows,
        )
        self.availability_service.supplies = supplies
        add_services(
            self.server,
            self.health,
            self.availability_service,
            ReservationService(self.reservations, m),
            SourcingService(allocator, m, self.settings.cost_model(), self.settings.max_shipments),
            self.stock_service,
            OperatorService(
                Operators(
                    self.storage,
                    self.locations,
                    ingest.sources,
                    self.reservations.channels,
                    self.settings.dead_letter_stream,
                ),
                m,
            ),
        )

    def reload_auth(self) -> None:
        """Reads the auth file again (SIGHUP, or a change); one that does not load is
        logged and the principals before it stay. Before start there is nothing to
        reload: start reads the file as it is then."""
        if self.gate is None:
            return
        try:
            self.gate.principals = principals = load_principals(self.settings)
        except AuthFileError as exc:
            log.error("auth file not reloaded, the principals before it stay: %s", exc)
            return
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

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: NOT_SERVING first, drain in-flight calls, then stop the store."""
        await self.health.shutdown()
        await self.hub.close()  # open watch streams end now, not at the end of the grace
        await self.server.stop(grace)
        if self.band_alerts is not None:  # after the last calls: their changes are checked
            await self.band_alerts.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.view is not None:
            await self.view.close()
        pending = set(self._tasks)
        while pending:  # Python 3.11's wait_for can swallow a cancel (gh-86296): send it again
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._unfollow_gc()
        if self._metrics_server is not None:
            http, _thread = self._metrics_server
            http.shutdown()
            http.server_close()
        with contextlib.suppress(Exception):
            await self.storage.aclose()
        for client in (self.redis, self.probe_redis):
            with contextlib.suppress(Exception):
                await client.aclose()
        if self.planner is not None:
            self.planner.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def store_of(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """The store's URL: --redis-url's, else that of an embedded store started for it (also
    returned, to be stopped by whoever started it)."""
    if settings.redis_url:
        return settings.redis_url, None
    embedded = EmbeddedRedis(
        settings.state_dir, appendfsync=settings.appendfsync, port=settings.store_port
    )
    await asyncio.to_thread(embedded.start)
    return embedded.url, embedded


def storage_of(redis: Any, settings: Settings, probe: Any = None) -> Storage:
    """The store as the settings say (probe: the health probe's own client)."""
    return Storage(
        redis,
        stock_buckets=settings.stock_buckets,
        retention_ms=settings.retention_ms,
        event_window_ms=settings.event_window_ms,
        gap_grace_ms=settings.sequence_gap_grace_ms,
        probe=probe,
        probe_timeout=settings.redis_probe_timeout_seconds,
        replicas=settings.durability_replicas if settings.durability == "replica" else 0,
        replica_timeout_ms=settings.durability_timeout_ms,
        fsync=settings.durability == "fsync",
    )


def create_server(settings: Settings, clock: Clock | None = None) -> Omnistock:
    return Omnistock(settings, clock)
