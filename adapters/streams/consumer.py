"""The consumer of the ingest stream: reads entries for its group, sends them through
StreamEvents, acknowledges what the server answered, dead-letters what can never apply
(the package docstring says how)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from adapters.config import (
    BadEntry,
    Follow,
    dead_letter,
    dead_letter_stream,
    event_of,
)
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

log = logging.getLogger("omnistock.streams")

Entry = tuple[bytes, dict[bytes, bytes]]
_LAG_INTERVAL = 1.0
# "events[110]." in the server's reason is the event's place in the adapter's batch, which
# means nothing to whoever reads the dead letter: the entry's own id says which it was.
_BATCH_POSITION = re.compile(r"^events\[\d+\]\.")


class StreamEnded(Exception):
    pass


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter(
            "omnistock_streams_events_total",
            "Stream entries answered by the server, by outcome",
            ["outcome"],
            registry=r,
        )
        self.dead = Counter(
            "omnistock_streams_dead_letters_total",
            "Entries moved to the dead-letter stream: unparsable (not a stock event), "
            "rejected (by the server), redelivered (too often without an answer)",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "omnistock_streams_errors_total",
            "Failed exchanges with the server or with Redis (retried)",
            ["kind"],
            registry=r,
        )
        self.lag = Gauge(
            "omnistock_streams_lag", "Entries not yet delivered to the group", registry=r
        )
        self.pending = Gauge(
            "omnistock_streams_pending", "Entries delivered, not yet acknowledged", registry=r
        )
        self.length = Gauge(
            "omnistock_streams_length",
            "Entries on the stream: those not yet acknowledged by every group (the rest is "
            "trimmed)",
            registry=r,
        )
        self.dead_length = Gauge(
            "omnistock_streams_dead_length",
            "Entries on the dead-letter stream (kept --dead-letter-days, at most "
            "--dead-letter-max)",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "omnistock_streams_lag_seconds",
            "Age of the oldest entry not yet delivered to the group (0: caught up)",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "omnistock_streams_batch_seconds",
            "From reading a batch to acknowledging it",
            registry=r,
        )


@dataclass(frozen=True)
class Options:
    stream: str
    group: str
    consumer: str
    batch: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 10
    start_id: str = "0"  # where a new group starts: "0" the whole stream, "$" new entries
    answer_timeout: float = 30.0  # seconds to wait for the server's answer to a batch
    dead_letter_days: float = 30.0  # dead letters older than this are trimmed (0: kept)
    dead_letter_max: int = 100_000  # and past this many, the oldest (0: no limit)


class Consumer:
    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        stub: pb_grpc.StockServiceStub,
        options: Options,
        follow: Follow | None = None,
    ) -> None:
        """follow: after a Redis failure, a client of the store's new address, if it moved
        (adapters/config.py FollowedStore)."""
        self.redis: Any = redis  # redis-py types its replies as wide unions
        self.follow = follow
        self.stub = stub
        self.o = options
        self.dead = dead_letter_stream(options.stream)
        self.metrics = Metrics()
        self._call: Any = None
        self._recovering = True  # at start: own pending entries (left by a crash) first
        self._retry: list[Entry] = []  # the batch that failed, to send again as it is
        self._group_made = False
        self._claim_from = b"0-0"
        self._claimed_at = float("-inf")
        self._lag_at = float("-inf")

    async def create_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                self.o.stream, self.o.group, self.o.start_id, mkstream=True
            )
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_made = True

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: own pending entries first, then entries idle too long at
        other consumers, then new ones. A batch that fails is retried as it is, from
        memory (reading it again would count as another delivery), with backoff."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self._group_made:
                    await self.create_group()
                await self.step()
                backoff = 0.1
                continue
            except grpc.aio.AioRpcError as exc:
                self._failed("server", f"{exc.code().name} {exc.details()}", backoff)
                await self._close_call()
            except (StreamEnded, asyncio.InvalidStateError, TimeoutError) as exc:
                self._failed("server", str(exc) or type(exc).__name__, backoff)
                await self._close_call()
            except (rexc.RedisError, OSError) as exc:
                self._failed("redis", str(exc), backoff)
                if "NOGROUP" in str(exc):  # the stream or the group was deleted: make it again
                    self._group_made = False
                moved = await self.follow() if self.follow is not None else None
                if moved is not None:
                    self.redis = moved
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)
        await self._close_call()

    def _failed(self, kind: str, what: str, backoff: float) -> None:
        self.metrics.errors.labels(kind).inc()
        log.warning("%s: %s; retrying in %.1fs", kind, what, backoff)

    async def step(self) -> int:
        """One batch: read, apply, acknowledge. Returns how many entries it handled."""
        await self._watch_lag()
        entries = self._retry
        if not entries:
            entries = await self._own_pending()
        if not entries:
            entries = await self._claim()
        if not entries:
            entries = await self._read_new()
        if entries:
            started = time.perf_counter()
            self._retry = entries
            await self.handle(entries)
            self._retry = []
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return len(entries)

    async def _own_pending(self) -> list[Entry]:
        """Entries delivered to this consumer and never acknowledged (a crash before XACK,
        a failed exchange), read until there are none left."""
        if not self._recovering:
            return []
        got = _entries(
            await self.redis.xreadgroup(
                self.o.group, self.o.consumer, {self.o.stream: "0"}, count=self.o.batch
            )
        )
        if not got:
            self._recovering = False
        gone = [e for e in got if not e[1]]  # deleted from the stream while pending
        if gone:
            await self._settle(gone, [])
        return await self._drop_redelivered([e for e in got if e[1]])

    async def _claim(self) -> list[Entry]:
        """Entries left pending by another consumer for longer than claim_idle_ms."""
        now = time.monotonic()
        if now - self._claimed_at < self.o.claim_idle_ms / 4000:
            return []
        self._claimed_at = now
        nxt, claimed, *_ = await self.redis.xautoclaim(
            self.o.stream,
            self.o.group,
            self.o.consumer,
            self.o.claim_idle_ms,
            start_id=self._claim_from,
            count=self.o.batch,
        )
        self._claim_from = nxt
        entries = [(i, f) for i, f in claimed if f]
        if entries:
            log.info("claimed %d entries left pending by another consumer", len(entries))
            self._claimed_at = float("-inf")  # there may be more: look again next step
        return await self._drop_redelivered(entries)

    async def _read_new(self) -> list[Entry]:
        got = await self.redis.xreadgroup(
            self.o.group,
            self.o.consumer,
            {self.o.stream: ">"},
            count=self.o.batch,
            block=self.o.block_ms,
        )
        return _entries(got)

    async def _drop_redelivered(self, entries: list[Entry]) -> list[Entry]:
        """Entries delivered max_deliveries times and never answered go to the dead-letter
        stream: something about them keeps failing, and they must not block the rest."""
        if not entries:
            return entries
        info = await self.redis.xpending_range(
            self.o.stream,
            self.o.group,
            min=entries[0][0],
            max=entries[-1][0],
            count=2 * len(entries),
            consumername=self.o.consumer,
        )
        times = {p["message_id"]: p["times_delivered"] for p in info}
        worn = [e for e in entries if times.get(e[0], 0) > self.o.max_deliveries]
        if worn:
            reason = f"delivered over {self.o.max_deliveries} times without an answer"
            await self._settle([], [(e, reason, "redelivered") for e in worn])
        return [e for e in entries if e not in worn]

    async def handle(self, entries: Sequence[Entry]) -> None:
        """Sends the batch's stock events; then, in one round trip, dead-letters what can
        never be applied and acknowledges every entry. Nothing is settled before the
        server has answered, so a failed batch can be sent again whole."""
        events: list[tuple[Entry, pb.StockEvent]] = []
        dead: list[tuple[Entry, str, str]] = []
        for entry in entries:
            try:
                events.append((entry, event_of(entry[1])))
            except BadEntry as exc:
                dead.append((entry, str(exc), "unparsable"))
        done = []
        if events:
            acks = await self._send([ev for _, ev in events])
            for (entry, _), ack in zip(events, acks, strict=True):
                outcome = pb.EventOutcome.Name(ack.outcome).removeprefix("EVENT_OUTCOME_")
                self.metrics.events.labels(outcome.lower()).inc()
                if ack.outcome == pb.EVENT_OUTCOME_REJECTED:  # named by the entry's field
                    dead.append((entry, _BATCH_POSITION.sub("", ack.reason), "rejected"))
                else:
                    done.append(entry)
        await self._settle(done, dead)

    async def _send(self, events: list[pb.StockEvent]) -> list[pb.EventAck]:
        """One request on the open StreamEvents call; its answer."""
        if self._call is None:
            self._call = self.stub.StreamEvents()
        await self._call.write(pb.StreamEventsRequest(events=events))
        async with asyncio.timeout(self.o.answer_timeout):  # a stuck server: retried
            response = await self._call.read()
        if response is grpc.aio.EOF:
            await self._close_call()
            raise StreamEnded("the server ended the event stream")
        for row in response.short_rows:
            log.warning(
                "short row %s/%s: on_hand %d < reserved %d",
                row.location_id,
                row.sku,
                row.on_hand,
                row.reserved,
            )
        return list(response.acks)

    async def _settle(self, done: Sequence[Entry], dead: Sequence[tuple[Entry, str, str]]) -> None:
        """Dead letters (entry, reason, kind) written, then every entry acknowledged."""
        if not done and not dead:
            return
        if dead:  # first, and apart: on a cluster the two streams may be on two nodes
            async with self.redis.pipeline(transaction=False) as pipe:
                for (entry_id, fields), reason, _ in dead:
                    letter: dict[Any, Any] = {**fields, **dead_letter("stream", reason, entry_id)}
                    pipe.xadd(self.dead, letter)
                    log.warning("dead letter %s: %s", entry_id.decode(), reason)
                await pipe.execute()
        await self.redis.xack(
            self.o.stream, self.o.group, *[e[0] for e in done], *[d[0][0] for d in dead]
        )
        for _, _, kind in dead:
            self.metrics.dead.labels(kind).inc()

    async def _watch_lag(self) -> None:
        if time.monotonic() - self._lag_at < _LAG_INTERVAL:
            return
        self._lag_at = time.monotonic()
        groups = await self.redis.xinfo_groups(self.o.stream)
        await self.trim(groups)
        group = next((g for g in groups if g["name"] == self.o.group.encode()), None)
        if group is None:
            return
        self.metrics.pending.set(group["pending"])
        if group.get("lag") is not None:
            self.metrics.lag.set(group["lag"])
        after = await self.redis.xrange(
            self.o.stream, min=b"(" + group["last-delivered-id"], count=1
        )
        age = _now_ms() - int(after[0][0].split(b"-")[0]) if after else 0
        self.metrics.lag_seconds.set(max(age, 0) / 1000)

    async def trim(self, groups: list[dict[Any, Any]]) -> None:
        """Trims the stream below what every group has acknowledged (its oldest pending
        entry, else past the last it was given), and the dead letters to their age and
        length; sets the depth gauges. A stream no group reads is left whole."""
        floor: tuple[int, int] | None = None
        for group in groups:
            if group["pending"]:
                oldest = (await self.redis.xpending(self.o.stream, group["name"]))["min"]
                keep = _entry_id(oldest)
            else:
                ms, seq = _entry_id(group["last-delivered-id"])
                keep = (ms, seq + 1)
            floor = keep if floor is None else min(floor, keep)
        if floor is not None:
            await self.redis.xtrim(self.o.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)
        if self.o.dead_letter_days:
            oldest_kept = _now_ms() - int(self.o.dead_letter_days * 86_400_000)
            await self.redis.xtrim(self.dead, minid=str(max(oldest_kept, 0)), approximate=False)
        if self.o.dead_letter_max:
            await self.redis.xtrim(self.dead, maxlen=self.o.dead_letter_max, approximate=False)
        self.metrics.length.set(await self.redis.xlen(self.o.stream))
        self.metrics.dead_length.set(await self.redis.xlen(self.dead))

    async def _close_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


def _entries(got: Any) -> list[Entry]:
    """XREADGROUP's reply (RESP2 list or RESP3 dict) as a list of entries."""
    if not got:
        return []
    streams = got.values() if isinstance(got, dict) else [s[1] for s in got]
    return [
        (i, f) for entries in streams for i, f in (entries[0] if isinstance(got, dict) else entries)
    ]


def _entry_id(value: bytes | str) -> tuple[int, int]:
    ms, seq = (value.decode() if isinstance(value, bytes) else value).split("-")
    return int(ms), int(seq)


def _now_ms() -> int:
    return int(time.time() * 1000)
