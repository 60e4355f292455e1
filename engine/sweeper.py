"""The sweeper: expires holds past their expiry (I7) and recovers stalled sagas.

Every server process runs one. They may run at once: each step is a CAS or an idempotent
script, so two sweepers at the same entry do the work once. Each pass reads the expiry
index of every location (one pipelined round trip, one per node on a cluster); the
locations come from the registry, so a location added by another process is swept from
the registry's next reload (within a second) on.
"""

from __future__ import annotations

import asyncio
import logging

from engine.clock import Clock
from engine.errors import FailedPrecondition, NotFound, OmnistockError
from engine.locations import LocationRegistry
from engine.metrics import Metrics
from engine.reservations import Reservations
from engine.storage import Storage

log = logging.getLogger(__name__)
BATCH = 500


class Sweeper:
    def __init__(
        self,
        storage: Storage,
        reservations: Reservations,
        locations: LocationRegistry,
        clock: Clock,
        metrics: Metrics,
        interval_ms: int,
    ) -> None:
        self.storage = storage
        self.reservations = reservations
        self.locations = locations
        self.clock = clock
        self.metrics = metrics
        self.interval = interval_ms / 1000

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except OmnistockError as exc:
                log.warning("sweep failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """One pass: returns how many reservation parts expired."""
        now = self.clock.now_ms()
        expired = await self.expire(now)
        for rid in await self.storage.sagas_due(now, BATCH):
            try:
                action = await self.reservations.recover(rid)
            except (FailedPrecondition, NotFound) as exc:
                # A part moved on in a way the saga cannot finish: say so, and let one
                # stuck saga never hold up the others.
                log.error("saga %s cannot be finished: %s", rid, exc)
                await self.storage.unschedule_saga(rid)
                continue
            if action != "none":
                log.info("recovered saga %s: %s", rid, action)
        return expired

    async def expire(self, now: int) -> int:
        locations = list(await self.locations.fresh())
        expired = 0
        for location, rids in (await self.storage.due(locations, now, BATCH)).items():
            expired += await self.storage.expire(location, rids, now)
        if expired:
            self.metrics.expiries.inc(expired)
        return expired
