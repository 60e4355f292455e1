"""python -m bench.handler: what one GetAvailability costs inside the server process, without
gRPC: the storefront's listing (`--skus` consecutive skus at `--at` of `--stores` stores), its
rows in the read cache, called on the servicer directly, one call after another.

A server in this process (its own embedded store in a temp dir), seeded as the storefront
scenario seeds it (`--stores` x 2,000 skus, 50 on hand); every listing called once to fill
the cache; then `--rounds` rounds of `--calls` listings, each round timed. Prints each
round's mean time a call, and the least and the median of them (the least is the cost with
the fewest interruptions from the rest of the machine). With `--profile`, one more round
under cProfile, its 25 costliest functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import tempfile
import time

import grpc
import uvloop

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.api.availability import AvailabilityService
from engine.app import create_server
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.settings import from_args

SKUS = 2000


class _Context:
    """What the servicer asks of a call's context on its way: the time left."""

    def time_remaining(self) -> float:
        return 5.0


async def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as state:
        app = create_server(
            from_args(
                [
                    *("--listen", "127.0.0.1:0", "--state-dir", state),
                    *("--metrics-port", "0", "--log-level", "WARNING"),
                ]
            )
        )
        await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                await seed_stores(Stubs(channel), args.stores, SKUS, on_hand=50)
            await _rounds(app.availability_service, args)
        finally:
            await app.stop()


async def _rounds(service: AvailabilityService, args: argparse.Namespace) -> None:
    rng = random.Random(1)
    listings = []
    for _ in range(args.calls):
        first = rng.randrange(SKUS - args.skus)
        skus = [sku_id(k) for k in range(first, first + args.skus)]
        where = [store_id(i) for i in rng.sample(range(args.stores), args.at)]
        listings.append(pb.GetAvailabilityRequest(skus=skus, location_ids=where))
    call = service.GetAvailability
    context = _Context()
    for request in listings:  # the cache fills; each answer checked once
        answer = await call(request, context)  # type: ignore[arg-type]
        got = [(level.location_id, level.sku, level.available) for level in answer.levels]
        if got != [(loc, sku, 50) for loc in request.location_ids for sku in request.skus]:
            raise SystemExit(f"a wrong answer for {request.skus[0]}...: {got[:3]}...")
    times = []
    for i in range(args.rounds):
        start = time.perf_counter()
        for request in listings:
            await call(request, context)  # type: ignore[arg-type]
        times.append((time.perf_counter() - start) / len(listings) * 1e6)
        print(f"round {i + 1}: {times[-1]:.0f} us a call", flush=True)
    least = min(times)
    print(
        f"GetAvailability, {args.skus} skus at {args.at} stores, in process: least {least:.0f} "
        f"us, median {statistics.median(times):.0f} us a call ({args.rounds} rounds of "
        f"{args.calls})"
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for request in listings:
            await call(request, context)  # type: ignore[arg-type]
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.handler", description=__doc__)
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--skus", type=int, default=50, help="skus a listing")
    parser.add_argument("--at", type=int, default=1, help="stores a listing (a product page: 20)")
    parser.add_argument("--calls", type=int, default=1000, help="listings a round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    uvloop.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
