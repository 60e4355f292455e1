"""python -m bench.memory: bytes per stock row in Redis at realistic sizes.

Loads rows the way stock enters omnistock (COUNT events through the storage layer) into a
private embedded server with the engine's defaults, then measures every stock bucket key
with MEMORY USAGE (key, value and Redis' per-key overhead) and, apart, the event ids the
dedupe window keeps. Also reports INFO used_memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from engine.domain.model import EventKind, StockEvent
from engine.store.connect import redis_client
from engine.store.embedded import EmbeddedRedis
from engine.store.storage import Storage


async def _sum_usage(client: Any, pattern: str) -> tuple[int, int]:
    total = keys = 0
    async for key in client.scan_iter(match=pattern, count=1000):
        total += await client.memory_usage(key, samples=0)
        keys += 1
    return total, keys


async def measure(rows: int, skus_per_location: int, buckets: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="omnistock-memory-"))
    server = EmbeddedRedis(state)
    server.start()
    client = redis_client(server.url, 10.0)
    try:
        storage = Storage(client, stock_buckets=buckets, retention_ms=1, event_window_ms=10**9)
        await storage.load_scripts()
        before = (await client.info("memory"))["used_memory"]
        now, started = int(time.time() * 1000), time.perf_counter()
        locations = max(1, rows // skus_per_location)
        for loc in range(locations):
            location = f"store-{loc:05d}"
            events = [
                StockEvent(f"m-{loc}-{i}", location, f"SKU-{i:07d}", EventKind.COUNT, i % 97, now)
                for i in range(skus_per_location)
            ]
            for start in range(0, len(events), 2000):
                await storage.apply_events(location, events[start : start + 2000], now)
            if loc % max(1, locations // 10) == 0:
                print(f"  {loc * skus_per_location:,} of {rows:,} rows", flush=True)
        load_s = time.perf_counter() - started
        after = (await client.info("memory"))["used_memory"]
        row_bytes, row_keys = await _sum_usage(client, "*:s:*")
        id_bytes, _ = await _sum_usage(client, "*:e")
        n = locations * skus_per_location
        return {
            "rows": n,
            "locations": locations,
            "skus_per_location": skus_per_location,
            "stock_buckets": buckets,
            "bucket_keys": row_keys,
            "bytes_per_row": round(row_bytes / n, 1),
            "bytes_per_event_id": round(id_bytes / n, 1),
            "used_memory_per_row_incl_event_ids": round((after - before) / n, 1),
            "load_seconds": round(load_s, 1),
        }
    finally:
        await client.aclose()
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--skus-per-location", type=int, default=5000)
    p.add_argument("--buckets", type=int, default=256, help="the engine's default: 256")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    results = []
    for rows in args.rows:
        print(f"{rows:,} rows:", flush=True)
        got = asyncio.run(measure(rows, args.skus_per_location, args.buckets))
        print(
            f"  {got['bytes_per_row']} bytes per stock row; {got['bytes_per_event_id']} per "
            f"remembered event id; used_memory {got['used_memory_per_row_incl_event_ids']} per "
            f"row with the ids; loaded in {got['load_seconds']}s"
        )
        results.append(got)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    command = "python -m bench.memory " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k != "out"
    )
    out.write_text(json.dumps({"command": command, "machine": machine(), "results": results}))
    print("results:", out)


if __name__ == "__main__":
    main()
