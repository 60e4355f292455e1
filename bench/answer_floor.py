"""python -m bench.answer_floor --listen 127.0.0.1:50556: a gRPC server with no engine, for the
storefront's floor: GetAvailability answers a fixed listing of 50 levels (the size of the
storefront scenario's listing), the health check answers SERVING, and the calls the
scenarios seed with (UpsertLocations, ApplyEvents) are accepted and ignored. Served by
grpc.aio on uvloop like server.py, without its interceptor or handlers, so `python -m bench
storefront --target 127.0.0.1:50556` measures what gRPC, this process's event loop and the
client cost for that answer: the part of a listing's latency no engine can remove.
"""

from __future__ import annotations

import argparse

import grpc
import uvloop
from grpc_health.v1 import _async as health
from grpc_health.v1 import health_pb2_grpc

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

LISTING = pb.GetAvailabilityResponse(
    levels=[
        pb.StockLevel(
            location_id="BENCH-STORE-0001",
            sku=f"BENCH-SKU-{k:06d}",
            available=50,
            on_hand=50,
            version=1,
            as_of=1_764_550_000_000,
            status=pb.STOCK_STATUS_IN_STOCK,
        )
        for k in range(50)
    ]
)


class _Availability(pb_grpc.AvailabilityServiceServicer):
    async def GetAvailability(
        self, request: pb.GetAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAvailabilityResponse:
        return LISTING


class _Stock(pb_grpc.StockServiceServicer):
    async def UpsertLocations(
        self, request: pb.UpsertLocationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertLocationsResponse:
        return pb.UpsertLocationsResponse()

    async def ApplyEvents(
        self, request: pb.ApplyEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyEventsResponse:
        return pb.ApplyEventsResponse()


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_AvailabilityServiceServicer_to_server(_Availability(), server)
    pb_grpc.add_StockServiceServicer_to_server(_Stock(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"answer floor listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_floor", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50556", help="a loopback host:port")
    uvloop.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
