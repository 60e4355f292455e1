"""`python -m bench.geo`: where FindNearby should look for candidate stores, measured.

    python -m bench.geo --stores 100 1000 10000 --queries 2000 --radius 25

For each estate size (the demo's stores around 54 real cities), the same random shoppers
(a store's position, jittered by a few km) ask for the active pickup stores within the
radius, nearest first, two ways:

- numpy: engine.usecases.index.LocationIndex in this process (what the engine uses);
- GEOSEARCH: the stores in one Redis geo set on a private embedded server
  (`GEOSEARCH ... FROMLONLAT ... BYRADIUS ... ASC WITHDIST`, one call at a time), then the
  same active/pickup filter in this process.

Prints the latency per query (p50, p99, µs), the candidates found, and how often the two
agree on the ids returned (they compute distances with slightly different Earth radii, so
a store within a metre of the edge may fall on either side).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.__main__ import machine
from engine.demo import demo_locations
from engine.domain.geo import Fulfilment
from engine.domain.model import Location, LocationType
from engine.store.connect import redis_client
from engine.store.embedded import EmbeddedRedis
from engine.usecases.index import LocationIndex

GEO_KEY = "{bench}:geo"


def shoppers(stores: list[Location], n: int, seed: int = 5) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        anchor = rng.choice(stores)
        lat = anchor.latitude + rng.uniform(-0.04, 0.04)
        lon = anchor.longitude + rng.uniform(-0.06, 0.06)
        points.append((lat, lon))
    return points


def percentiles(us: list[float]) -> dict[str, float]:
    a = np.array(us)
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99))}


async def measure(count: int, queries: int, radius: float) -> dict[str, Any]:
    stores = [loc for loc in demo_locations(stores=count) if loc.type is LocationType.STORE]
    by_id = {loc.id: loc for loc in stores}
    points = shoppers(stores, queries)

    built = time.perf_counter()
    index = LocationIndex(by_id)
    build_ms = (time.perf_counter() - built) * 1000
    numpy_us, numpy_ids = [], []
    for lat, lon in points:
        t = time.perf_counter()
        found = index.within(lat, lon, radius, set(), Fulfilment.PICKUP)
        numpy_us.append((time.perf_counter() - t) * 1e6)
        numpy_ids.append([loc.id for _, loc in found])

    with tempfile.TemporaryDirectory(prefix="omnistock-geo-") as state:
        server = EmbeddedRedis(Path(state))
        server.start()
        client = redis_client(server.url, 5.0)
        try:
            for start in range(0, len(stores), 1000):
                values: list[Any] = []
                for loc in stores[start : start + 1000]:
                    values += [loc.longitude, loc.latitude, loc.id]
                await client.geoadd(GEO_KEY, values)
            geo_us, geo_ids = [], []
            for lat, lon in points:
                t = time.perf_counter()
                got = await client.geosearch(
                    GEO_KEY, longitude=lon, latitude=lat, radius=radius, unit="km",
                    sort="ASC", withdist=True,
                )  # fmt: skip
                kept = []
                for member, _dist in got:
                    loc = by_id[member.decode()]
                    if loc.active and loc.pickup_enabled:
                        kept.append(loc.id)
                geo_us.append((time.perf_counter() - t) * 1e6)
                geo_ids.append(kept)
        finally:
            await client.aclose()
            server.stop()

    agree = sum(set(a) == set(b) for a, b in zip(numpy_ids, geo_ids, strict=True))
    return {
        "stores": len(stores),
        "radius_km": radius,
        "queries": queries,
        "candidates_mean": float(np.mean([len(ids) for ids in numpy_ids])),
        "numpy": percentiles(numpy_us) | {"index_build_ms": build_ms},
        "geosearch": percentiles(geo_us),
        "same_ids_share": agree / queries,
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.geo", description=__doc__)
    p.add_argument("--stores", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--radius", type=float, default=25.0, help="km")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    results = []
    for count in args.stores:
        r = asyncio.run(measure(count, args.queries, args.radius))
        results.append(r)
        print(
            f"{r['stores']:>6,} stores, {r['candidates_mean']:.0f} found on average: "
            f"numpy p50 {r['numpy']['p50_us']:.0f} µs p99 {r['numpy']['p99_us']:.0f} µs "
            f"(index built in {r['numpy']['index_build_ms']:.1f} ms); GEOSEARCH p50 "
            f"{r['geosearch']['p50_us']:.0f} µs p99 {r['geosearch']['p99_us']:.0f} µs; "
            f"same ids {r['same_ids_share']:.1%}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"geo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    command = "python -m bench.geo --stores " + " ".join(map(str, args.stores))
    command += f" --queries {args.queries} --radius {args.radius:g}"
    record = {"command": command, "machine": machine(), "results": results}
    path.write_text(json.dumps(record, indent=2))
    print("results:", path)


if __name__ == "__main__":
    main()
