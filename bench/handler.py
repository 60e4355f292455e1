"""python -m bench.handler: what one GetAvailability costs inside the server process apart
from gRPC's transport: the storefront's listing (`--skus` consecutive skus at `--at` of
`--stores` stores), its rows in the read cache, one call after another through what the
server runs for it: the request's bytes parsed, the edge interceptor's handler
(engine/api/edge.py, no principals), the servicer, its answer serialized.

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
from collections.abc import Awaitable, Callable

import grpc
import uvloop

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.api.edge import Edge
from engine.app import Omnistock, create_server
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.settings import from_args

SKUS = 2000


class _Context:
    """What the edge and the servicer ask of a call's context on its way: the time left."""

    def time_remaining(self) -> float:
        return 5.0


class _Details:
    method = "/omnistock.v1.AvailabilityService/GetAvailability"


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
            await _rounds(await _through_edge(app), args)
        finally:
            await app.stop()


Call = Callable[[bytes, _Context], Awaitable[bytes]]


async def _through_edge(app: Omnistock) -> Call:
    """GetAvailability as the server runs it, from the request's bytes to the answer's."""
    service = app.availability_service
    plain = grpc.unary_unary_rpc_method_handler(
        service.GetAvailability,
        request_deserializer=pb.GetAvailabilityRequest.FromString,
        response_serializer=pb.GetAvailabilityResponse.SerializeToString,
    )

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return plain

    assert app.gate is not None
    handler = await Edge(app.gate, app.metrics).intercept_service(continuation, _Details())
    parse, behaviour, answer = (
        handler.request_deserializer,
        handler.unary_unary,
        handler.response_serializer,
    )

    async def call(request: bytes, context: _Context) -> bytes:
        return answer(await behaviour(parse(request), context))  # type: ignore[no-any-return]

    return call


async def _rounds(call: Call, args: argparse.Namespace) -> None:
    rng = random.Random(1)
    listings = []
    for _ in range(args.calls):
        first = rng.randrange(SKUS - args.skus)
        skus = [sku_id(k) for k in range(first, first + args.skus)]
        where = [store_id(i) for i in rng.sample(range(args.stores), args.at)]
        listing = pb.GetAvailabilityRequest(skus=skus, location_ids=where)
        listings.append(listing.SerializeToString())
    context = _Context()
    for request in listings:  # the cache fills; each answer checked once
        answer = pb.GetAvailabilityResponse.FromString(await call(request, context))
        asked = pb.GetAvailabilityRequest.FromString(request)
        got = [(level.location_id, level.sku, level.available) for level in answer.levels]
        if got != [(loc, sku, 50) for loc in asked.location_ids for sku in asked.skus]:
            raise SystemExit(f"a wrong answer for {asked.skus[0]}...: {got[:3]}...")
    times = []
    for i in range(args.rounds):
        start = time.perf_counter()
        for request in listings:
            await call(request, context)
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
            await call(request, context)
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
