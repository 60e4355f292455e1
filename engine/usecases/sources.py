"""Where stock events come from: for each source, how late its events arrive and whether
its clock looks wrong (one till with a wrong clock must not freeze rows, or make every later
sale stale, unnoticed).

An event's delay is its arrival minus its source_time: the source's clock offset plus how
long the event took to get here. The least delay over a while is the best estimate of the
offset (the quickest delivery took about no time), so a source's offset is taken as the
least delay of its events over the last one to two minutes (two windows of WINDOW_MS). Past
--max-clock-skew-seconds either way, the source is flagged: `ahead` (its events claim to
come from the future; those further ahead than the skew are also rejected, see ingest.py),
or `behind` (every event of the last minutes came later than the skew allows: its clock is
behind, or it sends that late; either way its DELTAs may be older than the counts they
follow). Events that name no source are counted, but have no one clock to judge. Flagged:
logged and put on the alerts stream when it starts, again every
RELOG_MS while it lasts, and when it ends; its events counted in
omnistock_clock_skewed_events_total{clock}.

Each server process keeps what it saw in memory and adds it to the store every second
({source:<name>}:stats), so ListSources answers for every process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.domain.errors import OmnistockError
from engine.domain.model import StockEvent
from engine.metrics import Metrics
from engine.store.oversight import SourceSeen
from engine.store.storage import Storage

log = logging.getLogger(__name__)

WINDOW_MS = 60_000
RELOG_MS = 600_000
MAX_SOURCES = 10_000  # kept in one process; events of further sources are not tracked
FLUSH_SECONDS = 1.0


@dataclass
class _Source:
    events: int = 0  # since the last flush
    last_arrival: int = 0
    last_source_time: int = 0
    window_start: int = 0
    least: int | None = None  # the least delay in the current window
    least_before: int | None = None  # and in the one before it
    clock: str = "ok"
    told_at: int = 0  # when it was last logged as flagged
    named: bool = False  # in the store's index of sources

    def offset(self) -> int:
        return min(d for d in (self.least, self.least_before) if d is not None)

    def add(self, now: int, newest: int, least: int, events: int) -> None:
        if now - self.window_start >= WINDOW_MS:
            recent = now - self.window_start < 2 * WINDOW_MS
            self.least_before = self.least if recent else None
            self.least, self.window_start = None, now
        self.least = least if self.least is None else min(self.least, least)
        self.events += events
        self.last_arrival = now
        self.last_source_time = max(self.last_source_time, newest)


class Sources:
    def __init__(
        self,
        storage: Storage,
        metrics: Metrics,
        max_skew_ms: int,
        now_ms: Callable[[], int],
    ) -> None:
        self.storage = storage
        self.metrics = metrics
        self.max_skew_ms = max_skew_ms
        self.now_ms = now_ms
        self.seen: dict[str, _Source] = {}

    def saw(self, events: Sequence[StockEvent], now: int) -> list[dict[str, str]]:
        """Takes note of events arriving now; answers the alerts of sources whose clock
        became wrong or right again."""
        newest: dict[str, int] = {}  # its newest event's source time: the least delay
        for ev in events:
            if ev.source_time > newest.get(ev.source, 0):
                newest[ev.source] = ev.source_time
        counts = Counter(ev.source for ev in events)
        alerts = []
        for name, n in counts.items():
            least = now - newest[name]
            source = self.seen.get(name)
            if source is None:
                if len(self.seen) >= MAX_SOURCES:
                    continue
                source = self.seen[name] = _Source()
            source.add(now, newest[name], least, n)
            if not name:  # events that name no source may come from anywhere: no one clock
                continue
            alert = self._judge(name, source, now)
            if alert is not None:
                alerts.append(alert)
            if source.clock != "ok":
                self.metrics.clock_skewed_events.labels(source.clock).inc(n)
        return alerts

    def _judge(self, name: str, source: _Source, now: int) -> dict[str, str] | None:
        offset = source.offset()
        clock = "ok"
        if offset < -self.max_skew_ms:
            clock = "ahead"
        elif offset > self.max_skew_ms:
            clock = "behind"
        changed, was = clock != source.clock, source.clock
        source.clock = clock
        if not changed and (clock == "ok" or now - source.told_at < RELOG_MS):
            return None
        source.told_at = now
        shown = name or "(none)"
        if clock == "ok":
            log.info("source %s: clock within the allowed skew again (was %s)", shown, was)
        else:
            log.warning(
                "source %s: clock %s by %.1f s or more (its least late event of the last "
                "minutes came %+d ms from its source time; allowed: %d s)%s",
                shown,
                clock,
                abs(offset) / 1000,
                offset,
                self.max_skew_ms // 1000,
                ", or it sends its events that late" if clock == "behind" else "",
            )
        return {
            "kind": "clock_skew",
            "source": name,
            "clock": clock,
            "clock_offset_ms": str(offset),
            "at": str(now),
        }

    async def flush(self) -> None:
        """Adds what this process saw since the last flush to the store."""
        busy = {name: s for name, s in self.seen.items() if s.events}
        if not busy:
            return
        seen = {
            name: SourceSeen(s.events, s.last_arrival, s.last_source_time, s.offset(), s.clock)
            for name, s in busy.items()
        }
        new = [name for name, s in busy.items() if not s.named]
        await self.storage.record_sources(seen, new)
        for name, s in busy.items():  # only once written: a failed flush is tried again
            s.events -= seen[name].events
            s.named = True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except OmnistockError as exc:  # the store away: the counts wait for the next flush
                log.debug("source figures not written: %s", exc)
