"""python -m bench.bands: what finding stock band crossings costs (engine/usecases/bandalerts.py).

Loads rows as COUNT events into a private embedded server with the engine's defaults (256
buckets a location), then lets the detector's own check (BandAlerts.check, the rows handed
to it as if their change messages had come) go over every row three times:

- first: each row's first band noted (written for every row and channel);
- again, nothing changed (the usual case: a change that crosses no band; nothing written);
- after a band is set that puts every row in LOW (every row a crossing: noted, put in the
  outbox, then on the alerts stream).

For each pass: rows checked a second by one detector process, the detector's own CPU per
row (this process: the store runs in a process of its own), and Redis' time per row (its
EVALSHA time, from INFO commandstats). Then the bytes each row's band costs, by MEMORY USAGE
of the band buckets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from bench.memory import _sum_usage, private_store
from engine.domain.clock import SystemClock
from engine.domain.model import EventKind, Location, LocationType, StockEvent
from engine.domain.rules import Band, ChannelRule
from engine.metrics import Metrics
from engine.store.storage import Storage
from engine.store.watch import ChangedRows, WatchHub
from engine.usecases.bandalerts import BandAlerts
from engine.usecases.channels import ChannelRules
from engine.usecases.locations import LocationRegistry


async def _load(storage: Storage, locations: int, skus: int) -> LocationRegistry:
    registry = LocationRegistry(storage)
    names = [f"store-{loc:05d}" for loc in range(locations)]
    await registry.upsert([Location(n, n, LocationType.STORE, 51.5, -0.12) for n in names])
    now = int(time.time() * 1000)
    for location in names:
        events = [
            StockEvent(f"b-{location}-{i}", location, f"SKU-{i:07d}", EventKind.COUNT, 50, now)
            for i in range(skus)
        ]
        for start in range(0, len(events), 2000):
            await storage.apply_events(location, events[start : start + 2000], now)
    return registry


async def _pass(detector: BandAlerts, client: Any, every: dict[str, set[str]]) -> dict[str, Any]:
    """One check of every row, as the detector makes it: rows a second, CPU and Redis time."""
    rows = sum(len(skus) for skus in every.values())
    await client.config_resetstat()
    detector.changed.put_back(every)
    wall, cpu = time.perf_counter(), time.process_time()
    await detector.check()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    alerts = await client.xlen("{omnistock}:alerts")
    return {
        "rows": rows,
        "rows_per_s": round(rows / wall),
        "detector_cpu_us_per_row": round(cpu / rows * 1e6, 1),
        "redis_us_per_row": round(float(stats.get("usec", 0)) / rows, 2),
        "script_calls": int(stats.get("calls", 0)),
        "alerts_on_stream": alerts,
    }


async def measure(locations: int, skus: int, channels: int) -> dict[str, Any]:
    async with private_store(256) as (client, storage):
        registry = await _load(storage, locations, skus)
        rules = ChannelRules(storage, registry)
        named = [f"ch{i}" for i in range(channels)]
        if named:
            await storage.set_channel_rules({("*", ch): ChannelRule(buffer=2) for ch in named})
            await storage.set_bands({("*", ch): Band(low=5) for ch in named})
        metrics = Metrics()
        hub = WatchHub(client, False)
        detector = BandAlerts(storage, registry, rules, metrics, hub, SystemClock())
        detector.changed = ChangedRows()
        detector.changed.take_all()
        every = {loc: {f"SKU-{i:07d}" for i in range(skus)} for loc in registry.by_id}
        first = await _pass(detector, client, every)
        band_bytes, band_keys = await _sum_usage(client, "*:b:*")
        again = await _pass(detector, client, every)
        await storage.set_bands(
            {("*", ""): Band(low=100)} | {("*", ch): Band(low=100) for ch in named}
        )
        crossing = await _pass(detector, client, every)
        n = locations * skus
        return {
            "rows": n,
            "locations": locations,
            "skus_per_location": skus,
            "channels_checked": 1 + channels,
            "band_bytes_per_row": round(band_bytes / n, 1),
            "band_keys": band_keys,
            "first_check": first,
            "unchanged": again,
            "every_row_crossing": crossing,
        }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bands", description=__doc__)
    p.add_argument("--locations", type=int, default=20)
    p.add_argument("--skus-per-location", type=int, default=5000)
    p.add_argument(
        "--channels", type=int, nargs="*", default=[0, 2], help="channels with bands, besides none"
    )
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    results = []
    for channels in args.channels:
        got = asyncio.run(measure(args.locations, args.skus_per_location, channels))
        print(json.dumps(got, indent=2), flush=True)
        results.append(got)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bands-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
