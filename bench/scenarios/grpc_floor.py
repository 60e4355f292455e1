"""grpc-floor: the health check, an RPC that does no work: what one server process can answer
at all, the floor every other figure is compared with."""

from __future__ import annotations

import random
from collections import Counter

from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.scenarios import Stubs


class GrpcFloor:
    def __init__(self) -> None:
        self.request_message = health_pb2.HealthCheckRequest()

    async def setup(self, stubs: Stubs) -> None:
        return None

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        health = health_pb2_grpc.HealthStub(stubs.channel)
        await health.Check(self.request_message, timeout=5)
        return "ok"
