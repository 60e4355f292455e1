"""The store probe: pings Redis on a connection of its own, with a timeout of its own, and
decides whether the store is up. Health follows it (engine/app.py), and so does the
circuit in front of the store (Storage.open_circuit): while the store is known down, calls
fail at once with UNAVAILABLE instead of each waiting on a frozen socket until its deadline
or the socket timeout. Only the probe opens and closes it, never a call.

It pings every `interval` seconds (at once again after a ping that took longer). `failures`
failed pings in a row mark the store down, so a single slow answer (a stall of our own event
loop, a long fsync) flips nothing; the first ping that succeeds marks it up again. With the
defaults (0.25 s, 0.5 s timeout, 2 failures) a frozen store is known down within about
1.25 s, and a thawed one up within about 0.25 s.

On a Redis Cluster the probe pings every primary, and only drives health: the store is down
when none answers; one that does not is a degraded shard, reported in the log and in
`omnistock_redis_nodes_down` while health stays SERVING (the other shards' calls go on).
The circuit stays closed, because a node that is down takes away its own slots only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from engine.domain.errors import Unavailable
from engine.metrics import Metrics
from engine.store.storage import Storage

log = logging.getLogger(__name__)


class StoreProbe:
    def __init__(
        self,
        storage: Storage,
        metrics: Metrics,
        on_change: Callable[[bool], Awaitable[None]],
        *,
        interval: float,
        failures: int,
    ) -> None:
        """on_change(up) is awaited whenever the verdict changes."""
        self.storage = storage
        self.metrics = metrics
        self.on_change = on_change
        self.interval = interval
        self.failures = failures
        self.up = True
        self._failed = 0  # pings failed in a row
        self._nodes_down: list[str] = []
        self.circuit = not storage.cluster

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check()
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    async def check(self) -> None:
        """One ping, and what it changes."""
        try:
            await self.storage.probe()
        except Unavailable as exc:
            self._failed += 1
            if self.up and self._failed >= self.failures:
                await self._mark_down(str(exc))
        else:
            self._failed = 0
            if not self.up:
                await self._mark_up()
        self.metrics.redis_up.set(1 if self.up else 0)
        down = self.storage.nodes_down
        if down != self._nodes_down:
            if down:
                log.warning("redis primaries not answering: %s (the others serve)", down)
            else:
                log.warning("every redis primary answers again")
            self._nodes_down = down
        self.metrics.redis_nodes_down.set(len(down))

    async def _mark_down(self, why: str) -> None:
        self.up = False
        log.warning("%s (%d pings in a row): health NOT_SERVING", why, self._failed)
        if self.circuit:
            self.storage.open_circuit(f"the store failed {self._failed} health pings in a row")
        await self.on_change(False)

    async def _mark_up(self) -> None:
        self.up = True
        log.warning("redis reachable again: health SERVING")
        if self.circuit:
            self.storage.close_circuit()
        await self.on_change(True)
