"""The Redis Streams adapter: store systems append stock events to a stream; this process
applies them through the server's StockService.StreamEvents, exactly once.

    python -m adapters.streams [--stream omnistock:events] [--group omnistock]
                               [--consumer <host>] [--server 127.0.0.1:50051]

A consumer group delivers every entry at least once; the server's dedupe by event id makes
that exactly once. An entry is acknowledged (XACK) only after the server has answered for it
(applied, duplicate, stale or echo), so a consumer killed mid-batch leaves its entries
pending, and they are sent again: by itself when it restarts under the same name (it reads
its own pending entries first), or by another consumer of the group once they have been
idle for --claim-idle-ms (XAUTOCLAIM). The server then answers DUPLICATE for what it had
applied already.

An entry that can never be applied goes to the dead-letter stream `<stream>:dead` with the
reason, and is acknowledged, so it does not block the rest: one that is not a stock event
(adapters/config.py lists the fields), one the server rejects (a bad field, an unknown
location), and one delivered --max-deliveries times without ever being answered. While the
server or Redis cannot be reached nothing is acknowledged; the adapter retries with backoff.

Metrics (127.0.0.1:9465): omnistock_streams_events_total{outcome},
omnistock_streams_dead_letters_total{reason}, omnistock_streams_errors_total{kind},
omnistock_streams_lag (entries not yet delivered to the group), omnistock_streams_pending
(delivered, not yet acknowledged), omnistock_streams_lag_seconds (age of the oldest entry
not yet delivered), omnistock_streams_batch_seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis import exceptions as rexc

from adapters.config import (
    DEFAULT_SERVER,
    BadEntry,
    add_common_flags,
    dead_letter_stream,
    event_of,
    redis_url,
    serve_metrics,
)
from engine.logs import setup_logging
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

log = logging.getLogger("omnistock.streams")

Entry = tuple[bytes, dict[bytes, bytes]]
_LAG_INTERVAL = 1.0


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


class Consumer:
    def __init__(
        self, redis: aioredis.Redis, stub: pb_grpc.StockServiceStub, options: Options
    ) -> None:
        self.redis: Any = redis  # redis-py types its replies as wide unions
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
                if ack.outcome == pb.EVENT_OUTCOME_REJECTED:
                    dead.append((entry, ack.reason, "rejected"))
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
        async with self.redis.pipeline(transaction=False) as pipe:
            for (entry_id, fields), reason, _ in dead:
                letter: dict[bytes, bytes | str] = {
                    **fields,
                    b"dead.reason": reason,
                    b"dead.entry_id": entry_id,
                    b"dead.at": str(_now_ms()),
                }
                pipe.xadd(self.dead, letter)
                log.warning("dead letter %s: %s", entry_id.decode(), reason)
            pipe.xack(self.o.stream, self.o.group, *[e[0] for e in done], *[d[0][0] for d in dead])
            await pipe.execute()
        for _, _, kind in dead:
            self.metrics.dead.labels(kind).inc()

    async def _watch_lag(self) -> None:
        if time.monotonic() - self._lag_at < _LAG_INTERVAL:
            return
        self._lag_at = time.monotonic()
        groups = await self.redis.xinfo_groups(self.o.stream)
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


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.streams",
        description="Apply stock events from a Redis stream through omnistock, exactly once",
    )
    add_common_flags(parser, metrics_port=9465)
    parser.add_argument("--group", default="omnistock", help="the consumer group")
    parser.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this consumer's name in the group; keep it across restarts (default: host name)",
    )
    parser.add_argument("--server", default=DEFAULT_SERVER, help="omnistock gRPC address")
    parser.add_argument("--batch", type=int, default=500, help="entries per read and request")
    parser.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        help="take over entries pending this long at another (crashed) consumer",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=10,
        help="an entry delivered more often without an answer is dead-lettered",
    )
    parser.add_argument(
        "--start-id", default="0", help="where a new group starts: 0 the whole stream, $ new only"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 5000:
        parser.error("--batch must be 1 to 5000 (the server takes at most 5000 events a message)")
    return args


async def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    options = Options(
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        batch=args.batch,
        claim_idle_ms=args.claim_idle_ms,
        max_deliveries=args.max_deliveries,
        start_id=args.start_id,
    )
    redis = aioredis.from_url(redis_url(args.redis_url, args.state_dir))
    async with grpc.aio.insecure_channel(args.server) as channel:
        consumer = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
        serve_metrics(args.metrics_port, consumer.metrics.registry)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "applying %s (group %s, consumer %s) through %s",
            args.stream,
            args.group,
            args.consumer,
            args.server,
        )
        await consumer.run(stop)
    await redis.aclose()
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(main())
