"""Scenarios: what one request is. A scenario is a small class with `setup` (seed data over
gRPC, once, before the load), `request` (one operation; returns "ok", "short" or raises), and
`held` (the reservations it still holds, for the invariant check). Add one by writing a file
here and listing it in SCENARIOS."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Protocol

import grpc

from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.availability = pb_grpc.AvailabilityServiceStub(channel)
        self.reservations = pb_grpc.ReservationServiceStub(channel)
        self.stock = pb_grpc.StockServiceStub(channel)


class Scenario(Protocol):
    async def setup(self, stubs: Stubs) -> None: ...
    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str: ...


def open_channel(target: str, index: int) -> grpc.aio.Channel:
    # A local subchannel pool gives each channel its own connection.
    return grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", index)]
    )


def make_scenario(name: str, params: dict[str, Any]) -> Scenario:
    from bench.scenarios.channels import Channels
    from bench.scenarios.flash_sale import FlashSale
    from bench.scenarios.grpc_floor import GrpcFloor
    from bench.scenarios.mixed import Mixed
    from bench.scenarios.nearby import Nearby
    from bench.scenarios.networks import Networks
    from bench.scenarios.pos import Pos
    from bench.scenarios.preorder import Preorder
    from bench.scenarios.returns import Returns
    from bench.scenarios.storefront import Storefront

    scenarios: dict[str, type[Any]] = {
        "storefront": Storefront,
        "pos": Pos,
        "flash-sale": FlashSale,
        "mixed": Mixed,
        "grpc-floor": GrpcFloor,
        "nearby": Nearby,
        "channels": Channels,
        "networks": Networks,
        "returns": Returns,
        "preorder": Preorder,
    }
    if name not in scenarios:
        raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(scenarios)}")
    return scenarios[name](**params)  # type: ignore[no-any-return]


SCENARIOS = (
    "storefront", "pos", "flash-sale", "mixed", "grpc-floor", "nearby", "channels", "networks",
    "returns", "preorder",
)  # fmt: skip


class Context:
    """One load process: its channels, its random stream, what it holds."""

    def __init__(self, scenario: Scenario, channels: list[grpc.aio.Channel], seed: int) -> None:
        self.scenario = scenario
        self.channels = channels
        self.stubs = [Stubs(ch) for ch in channels]
        self.rng = random.Random(seed)
        self.held: Counter[tuple[str, str]] = Counter()
        self._next = 0

    @classmethod
    async def open(cls, cfg: Any, index: int) -> Context:
        channels = [open_channel(cfg.target, index * 1000 + i) for i in range(cfg.channels)]
        return cls(make_scenario(cfg.scenario, cfg.params), channels, cfg.seed * 7919 + index)

    async def run_one(self) -> str:
        self._next = (self._next + 1) % len(self.stubs)
        try:
            return await self.scenario.request(self.stubs[self._next], self.rng, self.held)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
