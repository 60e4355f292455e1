"""python -m bench.ingest: stock events per second through each ingest path.

Starts a server (fresh embedded store) and, for each path asked for, sends `--events`
stock DELTAs (unique ids, spread over `--stores` stores and `--skus` skus), then checks
that the rows add up (every event applied once) before it reports:

    apply     ApplyEvents, batches of --batch events, --inflight calls at once
    stream    one StreamEvents stream, batches of --batch events, every request written
              without waiting for acks (the server's read-ahead paces it)
    streams   the entries appended to the ingest stream first, then the Streams adapter
              process drains them: timed from its first acknowledged entry to the last
    webhooks  signed Shopify inventory_levels/update deliveries POSTed to the webhook
              receiver process (--inflight at once): deliveries per second, and latency
              to the HTTP answer (the event then written durably to the ingest stream)
    count     a CSV full count of one store (--count-lines lines) through the file adapter
              (ReconcileCount): lines per second

The client, the server, Redis and the adapters share this machine's cores: figures are a
floor for it, not a capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from adapters.config import DEFAULT_STREAM, entry_fields
from bench.__main__ import machine
from bench.server import ROOT, BenchServer
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

PATHS = ("apply", "stream", "streams")


class Run:
    def __init__(self, args: argparse.Namespace, server: BenchServer) -> None:
        self.args = args
        self.server = server
        self.channel = grpc.aio.insecure_channel(server.target)
        self.stock = pb_grpc.StockServiceStub(self.channel)
        self.availability = pb_grpc.AvailabilityServiceStub(self.channel)
        self.stores = [f"store-{i:03d}" for i in range(args.stores)]
        self.skus = [f"SKU-{i:05d}" for i in range(args.skus)]
        self.t0 = int(time.time() * 1000) - 3_600_000
        self.redis = aioredis.from_url((Path(server.state) / "redis.url").read_text().strip())

    async def setup(self) -> None:
        await self.stock.UpsertLocations(
            pb.UpsertLocationsRequest(
                locations=[
                    pb.Location(
                        id=s,
                        name=s,
                        type=pb.LOCATION_TYPE_STORE,
                        latitude=51.5,
                        longitude=-0.1,
                        pickup_enabled=True,
                        active=True,
                    )
                    for s in self.stores
                ]
            )
        )

    def events(self, path: str) -> list[pb.StockEvent]:
        n, stores, skus = self.args.events, self.stores, self.skus
        return [
            pb.StockEvent(
                event_id=f"{path}-{i}",
                location_id=stores[i % len(stores)],
                sku=skus[(i // len(stores)) % len(skus)],
                kind=pb.EVENT_KIND_DELTA,
                qty=1,
                source_time=self.t0 + 1 + i,
            )
            for i in range(n)
        ]

    async def total_on_hand(self) -> int:
        total = 0
        for start in range(0, len(self.skus), 1000):
            got = await self.availability.GetAvailability(
                pb.GetAvailabilityRequest(
                    skus=self.skus[start : start + 1000], location_ids=self.stores[:20]
                )
            )
            total += sum(lv.on_hand for lv in got.levels)
        if len(self.stores) > 20:
            raise ValueError("the check reads 20 stores at most: use --stores <= 20")
        return total

    async def apply(self, events: list[pb.StockEvent]) -> float:
        batches = [events[i : i + self.args.batch] for i in range(0, len(events), self.args.batch)]
        gate = asyncio.Semaphore(self.args.inflight)

        async def one(batch: list[pb.StockEvent]) -> None:
            async with gate:
                await self.stock.ApplyEvents(pb.ApplyEventsRequest(events=batch))

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        return time.perf_counter() - started

    async def stream(self, events: list[pb.StockEvent]) -> float:
        batch = self.args.batch

        async def requests() -> AsyncIterator[pb.StreamEventsRequest]:
            for i in range(0, len(events), batch):
                yield pb.StreamEventsRequest(events=events[i : i + batch])

        started = time.perf_counter()
        acked = 0
        async for response in self.stock.StreamEvents(requests()):
            acked += len(response.acks)
        assert acked == len(events)
        return time.perf_counter() - started

    async def streams(self, events: list[pb.StockEvent]) -> float:
        for i in range(0, len(events), 2000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for ev in events[i : i + 2000]:
                    pipe.xadd(DEFAULT_STREAM, entry_fields(ev))  # type: ignore[arg-type]
                await pipe.execute()
        adapter = self.spawn(
            "adapters.streams", "--consumer", "bench", "--batch", str(self.args.batch)
        )
        try:
            return await self.drain_time(len(events))
        finally:
            adapter.terminate()
            adapter.wait(10)

    async def drain_time(self, total: int) -> float:
        """From the first entry the group acknowledged to the last."""
        first = None
        while True:
            groups = (
                await self.redis.xinfo_groups(DEFAULT_STREAM)
                if await self.redis.exists(DEFAULT_STREAM)
                else []
            )
            info = groups[0] if groups else None
            if info and info["pending"] + info["lag"] < total and first is None:
                first = time.perf_counter()
            if info and info["pending"] == 0 and info["lag"] == 0:
                assert first is not None
                return time.perf_counter() - first
            await asyncio.sleep(0.02)

    def spawn(self, module: str, *flags: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", module, "--state-dir", self.server.state]
        command += ["--server", self.server.target, "--metrics-port", "0", "--log-level", "WARNING"]
        return subprocess.Popen(
            [*command, *flags],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    server = BenchServer(["--stock-buckets", "256"])
    server.start()
    results: dict[str, Any] = {}
    try:
        run = Run(args, server)
        await run.setup()
        expected = 0
        for path in args.paths:
            events = run.events(path)
            elapsed = await getattr(run, path)(events)
            expected += len(events)
            got = await run.total_on_hand()
            results[path] = {
                "events": len(events),
                "elapsed_s": round(elapsed, 3),
                "events_per_s": round(len(events) / elapsed),
                "every_event_applied_once": got == expected,
            }
            print(
                f"{path}: {len(events):,} events in {elapsed:.2f}s = "
                f"{len(events) / elapsed:,.0f}/s; rows add up: {got == expected}",
                flush=True,
            )
        await run.channel.close()
        await run.redis.aclose()
    finally:
        server.stop()
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    p.add_argument("paths", nargs="*", help=f"any of {', '.join(PATHS)} (default: all)")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--stores", type=int, default=20)
    p.add_argument("--skus", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500, help="events per call or request")
    p.add_argument("--inflight", type=int, default=4, help="ApplyEvents calls at once")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args(argv)
    args.paths = args.paths or list(PATHS)
    for path in args.paths:
        if path not in PATHS:
            p.error(f"unknown path {path!r}: choose from {', '.join(PATHS)}")
    results = asyncio.run(measure(args))
    report = {
        "command": "python -m bench.ingest " + " ".join(argv),
        "machine": machine(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ingest-{int(time.time())}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}")
    return 0 if all(r["every_event_applied_once"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
