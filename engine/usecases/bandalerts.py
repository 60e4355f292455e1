"""Stock band crossings on the alerts stream (issue 16): each time a row falls into a lower
band (IN_STOCK -> LOW, LOW -> OUT, IN_STOCK -> OUT) for no channel, or for a sales channel
that has bands of its own, one alert (kind `band`) names the row, the channel, the band it
left and the one it entered, for replenishment. A rise (a restock, a release) is noted, not
alerted, so that the next fall alerts again.

Who finds them. One process of a deployment at a time, the detector, holding the lease
{omnistock}:bands:lead (renewed every RENEW_S, lapsing LEASE_MS after the last renewal). It
follows the row changes of every active location (their shard channels, with a WatchHub of
its own: engine/store/watch.py), gathers the skus changed at each location for WINDOW_S,
then checks those rows, a script call per location (band_check.lua): each row's band for
each channel checked, from what that channel may hold of it now (channel_available, the
hold's own formula, with the channel's rule at the location), against the band last found,
kept in the location's slot ({L}:b:<b>). A fall is put in the location's outbox in the same
step, then moved onto the alerts stream by band_publish.lua.

Why each crossing is alerted once. The comparison and the note of the new band are one
atomic step in Redis, so two processes checking a row at once (a detector paused past its
lease, and the next) find a crossing once between them. Each crossing is numbered, and the
stream's side keeps the number of the last crossing it took from each location, so the move
from the outbox is exactly once too, even when a detector dies between the two steps (the
next one moves what it finds in the outbox). The lease only spares the others the work.

What can be missed, and what catches it. Pub/sub keeps nothing: a change published while no
one follows is not seen. So a second process, the standby (lease {omnistock}:bands:next),
follows the same changes and keeps the skus changed in the last two to three LEASE_MS;
when the detector dies, the standby takes its lease once it lapses (at most LEASE_MS +
RENEW_S after the detector's last renewal) and checks those rows first, so a crossing made
while no one led is found late, not lost. What still goes unseen until the row's next
change: a message lost to a reconnect of the detector's subscription, changes made while
both detector and standby are gone, and a row's first change after detection starts (it
only notes the row's first band: what it was before is not known). Rows are checked as
they are when checked, so a row that falls through LOW to OUT within one window alerts OUT
(from IN_STOCK) only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time

from engine.domain.clock import Clock
from engine.domain.errors import OmnistockError, Unavailable
from engine.domain.model import Location
from engine.metrics import Metrics
from engine.store.bands import Crossing, RowBands
from engine.store.codecs import ChannelHold
from engine.store.keys import LEASES
from engine.store.storage import Storage
from engine.store.watch import ChangedRows, WatchHub
from engine.usecases.channels import ChannelRules
from engine.usecases.locations import LocationRegistry

log = logging.getLogger(__name__)

WINDOW_S = 0.1  # changes gathered per location before their rows are checked
RENEW_S = 1.0  # how often a lease is renewed (and the locations followed refreshed)
LEASE_MS = 5000  # a lease not renewed for this long lapses: the standby takes over


class Role(enum.IntEnum):
    NONE = 0
    STANDBY = 1
    DETECTOR = 2


class BandAlerts:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        channels: ChannelRules,
        metrics: Metrics,
        hub: WatchHub,
        clock: Clock,
    ) -> None:
        """hub: a WatchHub of the detector's own (its own subscription)."""
        self.storage = storage
        self.clock = clock
        self.locations = locations
        self.channels = channels
        self.metrics = metrics
        self.hub = hub
        self.token = secrets.token_hex(8)
        self.role = Role.NONE
        self.changed = ChangedRows()
        self.followed: set[str] = set()
        self.acked: dict[str, int] = {}  # location -> its last crossing known on the stream
        self._held_at = 0.0  # when a lease was last taken or kept
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Takes the detector's or the standby's lease if one is free, then runs."""
        with contextlib.suppress(OmnistockError):  # the store away: the loop tries again
            await self.claim()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Checks what is left to check, then lets its lease go, for the next to take."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OmnistockError):
            if self.role is Role.DETECTOR:
                await self.check()
            for lease in LEASES:  # each only if it is this process's
                await self.storage.lease(lease, self.token, 0)
        self._become(Role.NONE)
        await self.hub.close()

    async def _run(self) -> None:
        renew_at = aged_at = time.monotonic()
        failing = False
        while True:
            await asyncio.sleep(WINDOW_S)
            try:
                now = time.monotonic()
                if now - aged_at >= LEASE_MS / 1000:
                    self.changed.age()
                    aged_at = now
                if now - renew_at >= RENEW_S:
                    renew_at = now
                    await self.claim()
                if self.role is Role.DETECTOR:
                    await self.check()
            except OmnistockError as exc:  # the store away: tried again next time
                if not failing:
                    log.warning("band crossings not checked: %s (retrying quietly)", exc)
                failing = True
            except Exception:  # a fault of ours: said, and the next round tried all the same
                log.exception("band crossings: unexpected failure")
            else:
                if failing:
                    log.info("band crossings checked again")
                failing = False

    # -- the leases ------------------------------------------------------------------------

    async def claim(self) -> None:
        """Keeps its lease, or takes a better one; then follows every active location while
        it has one, and none otherwise."""
        try:
            self._become(await self._claimed())
            self._held_at = time.monotonic()
        except Unavailable:
            if time.monotonic() - self._held_at > LEASE_MS / 1000:
                self._become(Role.NONE)  # its lease has lapsed: another may have it now
            raise
        finally:
            await self._follow()

    async def _claimed(self) -> Role:
        """The role this process has now: each lease renewed, or taken if free."""
        lead, standby = LEASES
        if await self.storage.lease(lead, self.token, LEASE_MS):
            if self.role is Role.STANDBY:
                await self.storage.lease(standby, self.token, 0)
            return Role.DETECTOR
        if self.role is Role.DETECTOR:  # another took it: a lapse; stand back
            return Role.NONE
        standing = await self.storage.lease(standby, self.token, LEASE_MS)
        return Role.STANDBY if standing else Role.NONE

    def _become(self, role: Role) -> None:
        if role is self.role:
            return
        log.info("band crossings: %s, was %s", role.name.lower(), self.role.name.lower())
        if role is Role.DETECTOR:
            self.changed.take_all()
        else:
            self.changed.forget()
        self.role = role
        self.metrics.band_detector.set(role.value)

    async def _follow(self) -> None:
        want: set[str] = set()
        if self.role is not Role.NONE:
            want = {loc.id for loc in await self.locations.active(set())}
        new, gone = want - self.followed, self.followed - want
        if gone:
            await self.hub.unfollow(sorted(gone), self.changed)
            self.followed -= gone
        if new:
            await self.hub.follow(sorted(new), self.changed)
            self.followed |= new

    # -- the checks ------------------------------------------------------------------------

    async def check(self) -> None:
        """Checks the rows changed since the last check, a location at a time, all at once;
        those of a location that could not be checked are kept for the next."""
        changed = self.changed.take()
        if not changed:
            return
        await self.channels.current()  # bands as they are: not up to a second old
        names = ["", *sorted({ch for _, ch in self.channels.bands if ch})]
        done = await asyncio.gather(
            *(self._check(loc, skus, names) for loc, skus in changed.items()),
            return_exceptions=True,
        )
        failed = {}
        for (location, skus), result in zip(changed.items(), done, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, OmnistockError):
                    raise result
                failed[location] = skus
        self.changed.put_back(failed)
        if failed:
            raise Unavailable(f"band crossings of {len(failed)} locations not checked")

    async def _check(self, location: str, skus: set[str], names: list[str]) -> None:
        loc = self.locations.by_id.get(location)
        if loc is None:
            return
        holds = [await self._hold(loc, ch) for ch in names]
        band_at = self.channels.band_at
        rows = [RowBands(sku, [band_at(loc, sku, ch) for ch in names]) for sku in sorted(skus)]
        acked = self.acked.get(location, 0)
        now = self.clock.now_ms()
        crossings = await self.storage.check_bands(location, now, acked, holds, rows)
        if crossings:
            await self._publish(location, crossings)

    async def _hold(self, location: Location, channel: str) -> ChannelHold:
        """How a hold of `channel` at the location is checked ('': no channel, no rule)."""
        if not channel:
            return ChannelHold()
        rules = await self.channels.at([location], channel)
        return ChannelHold.of(channel, rules[location.id])

    async def _publish(self, location: str, crossings: list[Crossing]) -> None:
        self.acked[location], put = await self.storage.publish_crossings(location, crossings)
        for status in put:
            self.metrics.band_crossings.labels(status.value).inc()
        if put:
            log.debug("band crossings at %s: %d on the alerts stream", location, len(put))
