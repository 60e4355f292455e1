"""python -m bench.staleness: how stale a cached read is, measured, and what a cached row
costs in memory.

A private embedded store; a read cache (engine/store/rowcache.py) in this process keeping
`--locations` x `--skus` rows; another client (another server process, as the cache sees
it) writing them one at a time, a stock delta each. For each write: the time from its
acknowledgement to the cache holding the row at the version it wrote (the cache is polled
on every turn of the event loop). `--readers` tasks read cached rows meanwhile, so the
feed is measured while the process serves reads. Then the memory: the cache filled with
`--memory-rows` rows, measured with tracemalloc (Python objects only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from engine.domain.model import EventKind, StockEvent
from engine.metrics import Metrics
from engine.store.connect import connect
from engine.store.embedded import EmbeddedRedis
from engine.store.rowcache import RowCache
from engine.store.storage import Storage

NOW = int(time.time() * 1000)


def storage_on(client: Any) -> Storage:
    return Storage(client, stock_buckets=256, retention_ms=3_600_000, event_window_ms=3_600_000)


async def delta(storage: Storage, location: str, sku: str, n: int) -> None:
    event = StockEvent(f"st-{n}", location, sku, EventKind.DELTA, -1, NOW + n)
    await storage.apply_events(location, [event], NOW + n + 1)


async def warm(cache: RowCache, pairs: list[tuple[str, str]]) -> None:
    while not all(cache.kept(loc, sku) is not None for loc, sku in pairs):
        await cache.rows(pairs)
        await cache.caught_up()


async def staleness(url: str, args: argparse.Namespace) -> dict[str, Any]:
    ours, theirs = await connect(url, 2.0), await connect(url, 2.0)
    storage, writer = storage_on(ours), storage_on(theirs)
    await storage.load_scripts()
    await writer.load_scripts()
    cache = RowCache(storage, Metrics(), max_rows=10**6, max_lag=args.max_lag_ms / 1000)
    await cache.start()
    pairs = [
        (f"store-{i:03d}", f"SKU-{k:05d}") for i in range(args.locations) for k in range(args.skus)
    ]
    for loc in {loc for loc, _ in pairs}:
        counts = [
            StockEvent(f"c-{loc}-{sku}", loc, sku, EventKind.COUNT, 10**6, NOW)
            for lc, sku in pairs
            if lc == loc
        ]
        await writer.apply_events(loc, counts, NOW + 1)
    await warm(cache, pairs)
    stop = asyncio.Event()

    async def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            await cache.rows(rng.sample(pairs, min(50, len(pairs))))
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader(i)) for i in range(args.readers)]
    lags: list[float] = []
    at_ack = 0  # writes already in the cache when their acknowledgement was seen
    rng = random.Random(7)
    for n in range(args.writes):
        loc, sku = rng.choice(pairs)
        before = cache.kept(loc, sku)
        assert before is not None
        await delta(writer, loc, sku, 10 + n)
        acked = time.perf_counter()
        row = cache.kept(loc, sku)
        at_ack += row is not None and row.version > before.version
        while row is None or row.version <= before.version:
            await asyncio.sleep(0)  # one turn of the event loop: the feed's reader runs
            row = cache.kept(loc, sku)
        lags.append(time.perf_counter() - acked)
        if n % 1000 == 0:
            print(f"  {n:,} writes", flush=True)
    stop.set()
    await asyncio.gather(*readers)
    await cache.close()
    await ours.aclose()
    await theirs.aclose()
    ms = sorted(lag * 1000 for lag in lags)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 3)

    return {
        "writes": len(lags),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ms[-1], 3),
        "in_cache_at_ack": round(at_ack / len(lags), 3),
        "readers": args.readers,
    }


async def memory(url: str, rows: int) -> dict[str, Any]:
    """Bytes of Python objects per cached row, the rows filled from Redis (absent rows are
    kept too, as version 0, exactly as real ones)."""
    client = await connect(url, 10.0)
    storage = storage_on(client)
    await storage.load_scripts()
    cache = RowCache(storage, Metrics(), max_rows=rows, max_lag=0.2)
    await cache.start()
    locations, per = max(1, rows // 2000), min(rows, 2000)
    pairs = [(f"mem-{i:04d}", f"SKU-{k:07d}") for i in range(locations) for k in range(per)]
    await cache.rows(pairs)  # subscribes
    await cache.caught_up()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for start in range(0, len(pairs), 2000):
        await cache.rows(pairs[start : start + 2000])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    kept = cache.cached
    await cache.close()
    await client.aclose()
    return {"rows_kept": kept, "bytes_per_row": round(grown / max(kept, 1), 1)}


async def main(args: argparse.Namespace) -> None:
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="omnistock-staleness-")))
    server.start()
    try:
        result = {
            "machine": machine(),
            "staleness": await staleness(server.url, args),
            "memory": await memory(server.url, args.memory_rows),
        }
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    out = Path("bench/out") / f"staleness-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.staleness", description=__doc__)
    p.add_argument("--writes", type=int, default=5000)
    p.add_argument("--locations", type=int, default=20)
    p.add_argument("--skus", type=int, default=100)
    p.add_argument("--readers", type=int, default=4, help="tasks reading cached rows meanwhile")
    p.add_argument("--max-lag-ms", type=float, default=200.0)
    p.add_argument("--memory-rows", type=int, default=100_000)
    asyncio.run(main(p.parse_args()))
