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
    count     a CSV full count of one store, --events lines (new skus), through the file
              adapter process (ReconcileCount): lines per second, from its start to its
              summary

The client, the server, Redis and the adapters share this machine's cores: figures are a
floor for it, not a capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import redis.asyncio as aioredis

from adapters.config import DEFAULT_STREAM, entry_fields
from bench.__main__ import machine
from bench.server import ROOT, BenchServer
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.loopback import free_port

PATHS = ("apply", "stream", "streams", "webhooks", "count")
SECRET = "bench-shopify-secret"


class Run:
    def __init__(self, args: argparse.Namespace, server: BenchServer) -> None:
        self.args = args
        self.server = server
        self.channel = grpc.aio.insecure_channel(server.target)
        self.stock = pb_grpc.StockServiceStub(self.channel)
        self.availability = pb_grpc.AvailabilityServiceStub(self.channel)
        self.stores = [f"store-{i:03d}" for i in range(args.stores)]
        self.skus = [f"SKU-{i:05d}" for i in range(args.skus)]
        self.read = list(self.skus)  # the skus whose rows the check adds up
        self.extra: dict[str, Any] = {}  # what a path measured besides events per second
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
        for start in range(0, len(self.read), 1000):
            got = await self.availability.GetAvailability(
                pb.GetAvailabilityRequest(
                    skus=self.read[start : start + 1000], location_ids=self.stores[:20]
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
        return await self.drain(len(events))

    async def drain(self, total: int) -> float:
        adapter = self.spawn(
            "adapters.streams", "--server", self.server.target, "--consumer", "bench",
            "--batch", str(self.args.batch),
        )  # fmt: skip
        try:
            return await self.drain_time(total)
        finally:
            adapter.terminate()
            adapter.wait(10)

    async def webhooks(self, events: list[pb.StockEvent]) -> float:
        """Each event becomes a signed inventory_levels/update of a row of its own (a COUNT
        of 1), the ids Shopify's, mapped to ours; the Streams adapter then applies them."""
        stores, n = self.stores, len(events)
        skus = [f"W-{i:05d}" for i in range(-(-n // len(stores)))]
        self.read += skus
        mappings = [
            pb.Mapping(
                source="shopify", kind=pb.MAPPING_KIND_LOCATION, external_id=str(1000 + i), id=s
            )
            for i, s in enumerate(stores)
        ] + [
            pb.Mapping(
                source="shopify", kind=pb.MAPPING_KIND_ITEM, external_id=str(90000 + i), id=s
            )
            for i, s in enumerate(skus)
        ]
        for i in range(0, len(mappings), 1000):
            await self.stock.SetMappings(pb.SetMappingsRequest(mappings=mappings[i : i + 1000]))
        port = free_port()
        receiver = self.spawn(
            "adapters.webhooks", "--listen", f"127.0.0.1:{port}", SHOPIFY_WEBHOOK_SECRET=SECRET
        )
        url = f"http://127.0.0.1:{port}/webhooks/shopify"
        latencies: list[float] = []
        try:
            async with aiohttp.ClientSession() as http:
                await wait_for_http(http, f"http://127.0.0.1:{port}/healthz")
                gate = asyncio.Semaphore(self.args.http_inflight)

                async def deliver(i: int) -> None:
                    t = datetime.fromtimestamp((self.t0 + 1000 + i) / 1000, UTC)
                    body = orjson.dumps(
                        {
                            "inventory_item_id": 90000 + i // len(stores),
                            "location_id": 1000 + i % len(stores),
                            "available": 1,
                            "updated_at": t.isoformat(timespec="milliseconds"),
                            "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{i}",
                        }
                    )
                    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
                    headers = {
                        "Content-Type": "application/json",
                        "X-Shopify-Topic": "inventory_levels/update",
                        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
                        "X-Shopify-Webhook-Id": f"bench-{i}",
                        "X-Shopify-Shop-Domain": "bench.myshopify.com",
                    }
                    async with gate:
                        sent = time.perf_counter()
                        async with http.post(url, data=body, headers=headers) as resp:
                            assert resp.status == 200, await resp.text()
                        latencies.append(time.perf_counter() - sent)

                started = time.perf_counter()
                await asyncio.gather(*(deliver(i) for i in range(n)))
                elapsed = time.perf_counter() - started
        finally:
            receiver.terminate()
            receiver.wait(10)
        ms = np.array(latencies) * 1000
        self.extra = {
            "answer_ms": {
                q: round(float(np.percentile(ms, p)), 2)
                for q, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9), ("max", 100))
            },
            "answers_over_1s": int((ms > 1000).sum()),
            "then_applied_by_the_streams_adapter_per_s": round(n / await self.drain(n)),
        }
        return elapsed

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

    async def count(self, events: list[pb.StockEvent]) -> float:
        n, store = len(events), self.stores[0]
        skus = [f"C-{i:06d}" for i in range(n)]
        path = Path(self.server.state) / "count.csv"
        path.write_text("sku,qty\n" + "".join(f"{sku},1\n" for sku in skus))
        started = time.perf_counter()
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable, "-m", "adapters.counts", str(path), "--location", store,
                "--counted-at", str(self.t0 + 10**6), "--missing", "keep",
                "--server", self.server.target, "--batch", "2000",
            ],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        assert f"lines {n:,}, changed {n:,}".replace(",", "") in done.stdout.replace(",", "")
        applied = 0
        for i in range(0, n, 1000):
            got = await self.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=skus[i : i + 1000], location_ids=[store])
            )
            applied += sum(lv.on_hand for lv in got.levels)
        self.extra = {"every_event_applied_once": applied == n, "counted": True}
        return elapsed

    def spawn(self, module: str, *flags: str, **env_vars: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
        command = [sys.executable, "-m", module, "--state-dir", self.server.state]
        command += ["--metrics-port", "0", "--log-level", "WARNING"]
        return subprocess.Popen(
            [*command, *flags],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    # what the engine can take: no --ingest-rate holding the one open principal back
    server = BenchServer(["--stock-buckets", "256", "--ingest-rate", "0"])
    server.start()
    results: dict[str, Any] = {}
    try:
        run = Run(args, server)
        await run.setup()
        expected = 0
        for path in args.paths:
            events = run.events(path)
            elapsed = await getattr(run, path)(events)
            if not run.extra.pop("counted", False):  # the count's rows are apart: checked there
                expected += len(events)
                run.extra["every_event_applied_once"] = await run.total_on_hand() == expected
            results[path] = {
                "events": len(events),
                "elapsed_s": round(elapsed, 3),
                "events_per_s": round(len(events) / elapsed),
                **run.extra,
            }
            run.extra = {}
            print(
                f"{path}: {len(events):,} events in {elapsed:.2f}s = "
                f"{len(events) / elapsed:,.0f}/s; each applied once: "
                f"{results[path]['every_event_applied_once']}",
                flush=True,
            )
        await run.channel.close()
        await run.redis.aclose()
    finally:
        server.stop()
    return results


async def wait_for_http(http: aiohttp.ClientSession, url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {within}s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    p.add_argument("paths", nargs="*", help=f"any of {', '.join(PATHS)} (default: all)")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--stores", type=int, default=20)
    p.add_argument("--skus", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500, help="events per call or request")
    p.add_argument("--inflight", type=int, default=4, help="ApplyEvents calls at once")
    p.add_argument("--http-inflight", type=int, default=32, help="webhook deliveries at once")
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
