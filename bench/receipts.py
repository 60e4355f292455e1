"""python -m bench.receipts [--holds N ...]: what a supply change costs a row with N future
holds (preorders of one unit each, on one sku at one store, against a purchase order of N
units): the UpsertSupply that delays the order (each hold re-checked against the supply, none
broken), then the one that receives it (every hold held on hand, in one step). One server of
this checkout per size; each call timed once from the client, over loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench.scenarios import Stubs, open_channel
from bench.scenarios.common import seed_stores, sku_id, store_id
from bench.server import BenchServer
from engine.domain.supply import DAY_MS
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


async def measure(target: str, holds: int) -> dict[str, float]:
    async with open_channel(target, 0) as channel:
        stubs = Stubs(channel)
        await seed_stores(stubs, 1, 1, on_hand=0)
        at, sku, now = store_id(0), sku_id(0), int(time.time() * 1000)

        def po(expected: int, received: bool = False) -> pb.UpsertSupplyRequest:
            supply = pb.Supply(supply_id="po-1", location_id=at, sku=sku, qty=holds)
            supply.expected_at, supply.received = expected, received
            return pb.UpsertSupplyRequest(supplies=[supply])

        await stubs.stock.UpsertSupply(po(now + 3 * DAY_MS))
        by = now + 10 * DAY_MS
        line = pb.ReservationLine(location_id=at, sku=sku, qty=1, promise_by=by)
        for start in range(0, holds, 200):
            await asyncio.gather(
                *(
                    stubs.reservations.Reserve(
                        pb.ReserveRequest(reservation_id=f"pre-{i}", lines=[line], ttl_seconds=60)
                    )
                    for i in range(start, min(start + 200, holds))
                )
            )
        t0 = time.perf_counter()
        await stubs.stock.UpsertSupply(po(now + 5 * DAY_MS))  # delayed, still in time
        t1 = time.perf_counter()
        await stubs.stock.UpsertSupply(po(0, received=True))
        t2 = time.perf_counter()
        request = pb.GetAvailabilityRequest(skus=[sku], location_ids=[at])
        (level,) = (await stubs.availability.GetAvailability(request)).levels
        assert level.reserved == holds, (level.reserved, holds)  # every hold on hand now
        return {"holds": holds, "delay_ms": (t1 - t0) * 1000, "receive_ms": (t2 - t1) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.receipts", description=__doc__)
    p.add_argument("--holds", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    results = []
    for n in args.holds:
        server = BenchServer()
        server.start()
        try:
            results.append(asyncio.run(measure(server.target, n)))
        finally:
            server.stop()
        r = results[-1]
        print(f"{n:>6} holds: delay {r['delay_ms']:.1f} ms, receive {r['receive_ms']:.1f} ms")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "receipts.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
