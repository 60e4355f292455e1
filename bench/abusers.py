"""The hostile clients of `python -m bench.abuse`: each scenario's abusive calls, built as
the abuse table of the issue describes them, run in client processes of their own.

A unary abuse (unknown locations, Allocate, SetSafetyStock) is a loop of calls, one in
flight per client, each one's status and duration recorded. The biggest requests (100,000
location ids, 100,000 safety entries, 5,000 events) are serialized once and sent as bytes,
each call's ids made new by rewriting a counter of fixed width in them (`Template`): built
anew in Python, they took the four clients 0.8-1.8 of the machine's 2 cores, and the
server was measured against its own load generator. A stream abuse (watches,
StreamEvents, ReconcileCount) opens its streams, feeds them, and holds them open; a stream
the server ends is recorded with the status it got, one still open at the end as "open".
Sizes are the issue's, times `scale` (at least 1), so a smoke test can run them small.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.server import bearer
from engine.domain.model import MAX_EVENTS, MAX_LINES, MAX_ROWS, MAX_SKUS
from engine.domain.sourcing import MAX_SHIPMENTS
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

# The sizes.
UNKNOWN_LOCATIONS = 100_000  # location ids in one GetAvailability
ALLOCATE_LINES = MAX_LINES  # 200 lines in one Allocate, with max_shipments = MAX_SHIPMENTS (10)
WATCHES = 500  # WatchAvailability streams, each with send_current
WATCH_SKUS = MAX_SKUS  # 1,000 skus a watch ...
WATCH_LOCATIONS = MAX_ROWS // MAX_SKUS  # ... at 20 locations: 20,000 rows, the cap
EVENT_STREAMS = 20  # StreamEvents streams that never read an ack
EVENTS_PER_MESSAGE = MAX_EVENTS  # 5,000, the most one message may carry
SAFETY_ENTRIES = 100_000  # SetSafetyStock entries at one location
COUNT_LINES = 1_000_000  # ReconcileCount lines sent without the end marker, then held
COUNT_LINES_PER_MESSAGE = 10_000
CATALOG = 2000  # the demo's skus: SKU-000001 ... SKU-002000
DESTINATIONS = ((51.507, -0.128), (40.713, -74.006), (48.857, 2.352), (52.520, 13.405))

SCENARIOS = (
    "baseline",
    "unknown-locations",
    "allocate",
    "watch",
    "stream-events",
    "safety-stock",
    "reconcile",
)


# Scenarios whose clients send a finite amount and then hold: probing goes on until all is
# sent (and a little after), however long past --seconds that is.
FINITE_FEEDS = frozenset({"reconcile"})


def sku(i: int) -> str:
    return f"SKU-{i + 1:06d}"


MARK = "n000000"  # in a template's ids: the counter each copy rewrites


class Template:
    """A request serialized once; `bytes_for(n)` is it with every MARK replaced by n, of
    the same width, so the bytes stay a valid message of the same length."""

    def __init__(self, message: Any) -> None:
        self.data: bytes = message.SerializeToString()
        self.mark = MARK.encode()
        assert self.mark in self.data

    def bytes_for(self, n: int) -> bytes:
        return self.data.replace(self.mark, f"n{n % 1_000_000:06d}".encode())


@dataclass(frozen=True)
class Plan:
    """What one abusive client process needs to know (picklable)."""

    scenario: str
    target: str
    clients: int
    index: int
    scale: float
    run_id: str
    probe_location: str
    probe_sku: str
    locations: tuple[str, ...]  # every active location, the probe's first
    stop_after: float  # seconds: a client stops by itself then, whatever happens
    token: str  # the bearer token of the abusers' principal ("": an open server)

    def size(self, full: int) -> int:
        return max(1, round(full * self.scale))

    def others(self) -> list[str]:
        """Locations other than the probe's, so the abuse does not write the probed row."""
        return [loc for loc in self.locations if loc != self.probe_location] or [
            self.probe_location
        ]

    def share(self, total: int) -> list[int]:
        """This client's streams, numbered over all clients."""
        return list(range(self.index, total, self.clients))


@dataclass
class Tally:
    """What the abusive calls got."""

    statuses: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)  # unary calls that finished
    sent: Counter[str] = field(default_factory=Counter)  # messages, lines, events ...

    def report(self) -> dict[str, Any]:
        return {
            "statuses": dict(self.statuses),
            "call_seconds": sorted(round(s, 4) for s in self.seconds),
            "sent": dict(self.sent),
        }


def _code(exc: BaseException) -> str:
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__


async def _race(work: Awaitable[Any], stop: asyncio.Event) -> asyncio.Future[Any] | None:
    """`work` as a finished future, or None (work cancelled) if `stop` came first."""
    task, stopper = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None


async def unary_loop(
    call: Callable[[int], Awaitable[Any]], stop: asyncio.Event, tally: Tally
) -> None:
    """One call in flight at a time, until stopped; a call cut by the stop is "unfinished"."""
    n = 0
    while not stop.is_set():
        start = time.perf_counter()
        done = await _race(call(n), stop)
        n += 1
        if done is None:
            tally.statuses["unfinished"] += 1
            return
        tally.seconds.append(time.perf_counter() - start)
        exc = done.exception()
        tally.statuses["OK" if exc is None else _code(exc)] += 1


async def hold(
    call: Any, feed: Coroutine[Any, Any, None], stop: asyncio.Event, tally: Tally
) -> None:
    """Runs `feed` (writes or reads of the stream) and waits; records the status the server
    ended the call with, or "open" if it was still open at the stop (then cancels it)."""
    feeder = asyncio.ensure_future(feed)
    ended = await _race(call.code(), stop)
    feeder.cancel()
    with contextlib.suppress(BaseException):
        await feeder
    if ended is None:
        tally.statuses["open"] += 1
        call.cancel()
    else:
        code = ended.result()
        tally.statuses[code.name if code is not None else "UNKNOWN"] += 1


# -- the scenarios ----------------------------------------------------------------------


class Abuse:
    def __init__(
        self, plan: Plan, channel: grpc.aio.Channel, tally: Tally, fed: Callable[[], None]
    ) -> None:
        self.plan = plan
        self.tally = tally
        self.fed = fed  # told when a finite feed (the count's lines) is all sent or refused
        self.availability = pb_grpc.AvailabilityServiceStub(channel)
        self.sourcing = pb_grpc.SourcingServiceStub(channel)
        self.stock = pb_grpc.StockServiceStub(channel)
        self.raw = channel  # for requests sent as bytes (Template): no serializer
        self.md = bearer(plan.token)

    async def run(self, stop: asyncio.Event) -> None:
        runs: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = {
            "unknown-locations": self.unknown_locations,
            "allocate": self.allocate,
            "watch": self.watch,
            "stream-events": self.stream_events,
            "safety-stock": self.safety_stock,
            "reconcile": self.reconcile,
        }
        await runs[self.plan.scenario](stop)

    async def unknown_locations(self, stop: asyncio.Event) -> None:
        """GetAvailability of one sku at 100k location ids no one has (new ones each call)."""
        p, n = self.plan, self.plan.size(UNKNOWN_LOCATIONS)
        ids = [f"nowhere-{p.run_id}-{p.index}-{MARK}-{i:06d}" for i in range(n)]
        template = Template(pb.GetAvailabilityRequest(skus=[p.probe_sku], location_ids=ids))
        call = self.raw.unary_unary(
            "/omnistock.v1.AvailabilityService/GetAvailability",
            response_deserializer=pb.GetAvailabilityResponse.FromString,
        )
        await unary_loop(lambda k: call(template.bytes_for(k), metadata=self.md), stop, self.tally)

    async def allocate(self, stop: asyncio.Event) -> None:
        """Allocate 200 lines (split allowed) with max_shipments 10, plan only."""
        p, n = self.plan, self.plan.size(ALLOCATE_LINES)

        def call(k: int) -> Awaitable[Any]:
            first = (p.index * 7 + k) * 37 % CATALOG
            lat, lon = DESTINATIONS[(p.index + k) % len(DESTINATIONS)]
            lines = [pb.BasketLine(sku=sku((first + i) % CATALOG), qty=1 + i % 5) for i in range(n)]
            return self.sourcing.Allocate(  # type: ignore[no-any-return]
                pb.AllocateRequest(
                    lines=lines,
                    latitude=lat,
                    longitude=lon,
                    max_shipments=MAX_SHIPMENTS,
                    allow_split=True,
                ),
                metadata=self.md,
            )

        await unary_loop(call, stop, self.tally)

    async def safety_stock(self, stop: asyncio.Event) -> None:
        """SetSafetyStock of 100k skus at one location (each client its own), 1 and 2 in
        turn so that every call changes every row."""
        p, n = self.plan, self.plan.size(SAFETY_ENTRIES)
        others = p.others()
        location = others[p.index % len(others)]
        requests = [
            pb.SetSafetyStockRequest(
                entries=[
                    pb.SafetyStockEntry(location_id=location, sku=sku(i), qty=qty) for i in range(n)
                ]
            ).SerializeToString()
            for qty in (1, 2)
        ]
        call = self.raw.unary_unary(
            "/omnistock.v1.StockService/SetSafetyStock",
            response_deserializer=pb.SetSafetyStockResponse.FromString,
        )
        await unary_loop(lambda k: call(requests[k % 2], metadata=self.md), stop, self.tally)

    async def watch(self, stop: asyncio.Event) -> None:
        """500 WatchAvailability streams over all clients, each 1,000 skus x 20 locations
        with send_current, the probed row among them; each stream read as fast as it comes."""
        p = self.plan
        n_skus, n_locations = p.size(WATCH_SKUS), p.size(WATCH_LOCATIONS)

        def request(k: int) -> pb.WatchAvailabilityRequest:
            first = k * 37 % CATALOG
            skus = [p.probe_sku, *(sku((first + i) % CATALOG) for i in range(n_skus))]
            others = p.others()
            near = (others[(k + i) % len(others)] for i in range(n_locations))
            locations = [p.probe_location, *near]
            return pb.WatchAvailabilityRequest(
                skus=list(dict.fromkeys(skus))[:n_skus],
                location_ids=list(dict.fromkeys(locations))[:n_locations],
                send_current=True,
            )

        async def read(call: Any) -> None:
            async for _ in call:
                self.tally.sent["changes_received"] += 1

        async def one(k: int) -> None:
            call = self.availability.WatchAvailability(request(k), metadata=self.md)
            await hold(call, read(call), stop, self.tally)

        await asyncio.gather(*(one(k) for k in p.share(p.size(WATCHES))))

    async def stream_events(self, stop: asyncio.Event) -> None:
        """20 StreamEvents streams over all clients, each writing messages of 5,000 stock
        DELTAs for as long as the server takes them, never reading an ack."""
        p, per_message = self.plan, self.plan.size(EVENTS_PER_MESSAGE)
        others = p.others()

        async def feed(call: Any, k: int) -> None:
            location, now = others[k % len(others)], int(time.time() * 1000)
            events = [
                pb.StockEvent(
                    event_id=f"abuse-{p.run_id}-{k}-{MARK}-{i}",
                    location_id=location,
                    sku=sku(i % CATALOG),
                    kind=pb.EVENT_KIND_DELTA,
                    qty=1,
                    source_time=now,
                    source="abuse",
                )
                for i in range(per_message)
            ]
            template = Template(pb.StreamEventsRequest(events=events))
            for m in itertools.count():
                await call.write(template.bytes_for(m))
                self.tally.sent["messages"] += 1
                self.tally.sent["events"] += per_message

        async def one(k: int) -> None:
            call = self.raw.stream_stream(
                "/omnistock.v1.StockService/StreamEvents",
                response_deserializer=pb.StreamEventsResponse.FromString,
            )(metadata=self.md)
            await hold(call, feed(call, k), stop, self.tally)

        await asyncio.gather(*(one(k) for k in p.share(p.size(EVENT_STREAMS))))

    async def reconcile(self, stop: asyncio.Event) -> None:
        """One ReconcileCount per client: a header, 1M lines, no end marker, then held open."""
        p, total = self.plan, self.plan.size(COUNT_LINES)
        others = p.others()
        location = others[p.index % len(others)]

        async def feed(call: Any) -> None:
            header = pb.CountHeader(
                location_id=location,
                count_id=f"abuse-{p.run_id}-{p.index}",
                counted_at=int(time.time() * 1000),
                missing=pb.MISSING_SKUS_KEEP,
            )
            started = time.perf_counter()
            try:
                await call.write(pb.ReconcileCountRequest(header=header))
                for first in range(0, total, COUNT_LINES_PER_MESSAGE):
                    last = min(total, first + COUNT_LINES_PER_MESSAGE)
                    skus = (f"SKU-{i + 1:07d}" for i in range(first, last))
                    lines = [pb.CountLine(sku=name, qty=1) for name in skus]
                    await call.write(pb.ReconcileCountRequest(lines=lines))
                    self.tally.sent["lines"] += len(lines)
            finally:
                self.tally.sent["feed_ms"] = round((time.perf_counter() - started) * 1000)
                self.fed()

        call = self.stock.ReconcileCount(metadata=self.md)
        await hold(call, feed(call), stop, self.tally)


async def _stopper(flag: Any, within: float, stop: asyncio.Event) -> None:
    """Sets `stop` when `flag` (a multiprocessing Event) is, or after `within` seconds."""
    await asyncio.to_thread(flag.wait, within)
    stop.set()


async def run_client(plan: Plan, flag: Any, tell: Callable[[str], None]) -> dict[str, Any]:
    """Runs one client's abuse until `flag` (a multiprocessing Event) is set; tells "ready"
    once connected, and "fed" once a finite feed is sent."""
    tally, stop = Tally(), asyncio.Event()
    options: Sequence[tuple[str, Any]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    async with grpc.aio.insecure_channel(plan.target, options=options) as channel:
        await channel.channel_ready()
        tell("ready")
        stopper = asyncio.ensure_future(_stopper(flag, plan.stop_after, stop))
        await Abuse(plan, channel, tally, lambda: tell("fed")).run(stop)
        stop.set()
        await stopper
    return tally.report()


def client_entry(plan: Plan, flag: Any, results: Any) -> None:
    """A client process: puts ("ready", index), perhaps ("fed", index), then ("done", index,
    report) on `results`."""
    report = asyncio.run(run_client(plan, flag, lambda what: results.put((what, plan.index))))
    results.put(("done", plan.index, report))
