"""The sweeper: expires holds past their expiry (I7) and recovers stalled sagas.

Every server process runs one. They may run at once: each step is a CAS or an idempotent
script, so two sweepers at the same entry do the work once. A pass looks only at the
locations the wake-up index says may have a hold due (engine/store/parts.py, "expiry"), so its cost
follows the holds that expire, not the size of the estate. As a safety net each pass also
re-arms a slice of all locations, so that every location's earliest expiry is put back on
the wake-up index at least every FULL_SCAN_S seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math

from engine.domain.clock import Clock
from engine.domain.errors import FailedPrecondition, NotFound, OmnistockError
from engine.metrics import Metrics
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.reservations import Reservations

log = logging.getLogger(__name__)
BATCH = 500
FULL_SCAN_S = 10.0


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
        self._cursor = 0

    async def run(self) -> None:
        failed = 0  # passes failed in a row: an outage is logged once, not at every pass
        while True:
            try:
                await self.sweep()
            except OmnistockError as exc:
                if not failed:
                    log.warning("sweep failed: %s (retrying quietly until one succeeds)", exc)
                failed += 1
            else:
                if failed:
                    log.info("sweeping again after %d failed passes", failed)
                failed = 0
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
        woken = await self.storage.woken(now, BATCH)
        expired = 0
        for location, rids in (await self.storage.due(list(woken), now, BATCH)).items():
            done = await self.storage.expire(location, rids, now)
            self.metrics.expiries.inc(done)  # counted as their units come back
            expired += done
        rearm: dict[str, int | None] = dict.fromkeys(await self._slice())
        rearm.update(woken)  # those woken are taken off first, if no hold moved them
        await self.storage.rearm(rearm)
        return expired

    async def _slice(self) -> list[str]:
        """The next share of all locations, so that a whole round takes FULL_SCAN_S."""
        ids = list(await self.locations.fresh())
        if not ids:
            return []
        share = max(1, math.ceil(len(ids) * self.interval / FULL_SCAN_S))
        start = self._cursor % len(ids)
        self._cursor = start + share
        chosen = ids[start : start + share]
        return chosen + ids[: min(share, len(ids)) - len(chosen)]  # wrapping round
