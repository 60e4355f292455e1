"""A typed asyncio client for storefront, POS and fulfilment code.

Calls that fail with UNAVAILABLE (the server or its store briefly away) are retried with
backoff. That is safe because every changing call is idempotent: a reservation id holds
once however often it is sent, commit and release settle once, and stock events are
applied once by event id.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from engine.api.convert import location_from_pb
from engine.client_states import StatesClient
from engine.client_supply import SupplyCalls
from engine.domain.bundles import Bundle
from engine.domain.geo import Fulfilment
from engine.domain.model import (
    Availability,
    BasketLine,
    FutureLine,
    HoldResult,
    Line,
    LocationType,
    NearbyHit,
    Reservation,
    ReservationState,
    Shortfall,
    StockRow,
)
from engine.domain.networks import Network, NetworkLevel, Selector
from engine.domain.rules import ChannelRule, CustomerLimit, Pool
from engine.domain.states import StockState
from engine.domain.supply import Promise, Supply, SupplyKind
from engine.domain.transfers import Transfer
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

__all__ = [
    "Availability",
    "BasketLine",
    "ChannelRule",
    "CustomerLimit",
    "Fulfilment",
    "Line",
    "NearbyHit",
    "Network",
    "NetworkLevel",
    "OmnistockClient",
    "Pool",
    "Promise",
    "Selector",
    "StockState",
    "Supply",
    "SupplyKind",
    "Transfer",
]
T = TypeVar("T")
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
_STATES = {
    pb.RESERVATION_STATE_HELD: ReservationState.HELD,
    pb.RESERVATION_STATE_COMMITTED: ReservationState.COMMITTED,
    pb.RESERVATION_STATE_RELEASED: ReservationState.RELEASED,
    pb.RESERVATION_STATE_EXPIRED: ReservationState.EXPIRED,
}


_FULFILMENTS = {
    Fulfilment.ANY: pb.FULFILMENT_UNSPECIFIED,
    Fulfilment.PICKUP: pb.FULFILMENT_PICKUP,
    Fulfilment.SHIP: pb.FULFILMENT_SHIP,
}
_TYPES = {
    LocationType.STORE: pb.LOCATION_TYPE_STORE,
    LocationType.DC: pb.LOCATION_TYPE_DC,
    LocationType.DARK_STORE: pb.LOCATION_TYPE_DARK_STORE,
}


def _availability(msg: pb.StockLevel) -> Availability:
    row = StockRow(msg.on_hand, msg.reserved, msg.safety_stock, msg.version, msg.as_of)
    return Availability(msg.location_id, msg.sku, row, msg.available)


def _network(network: Network) -> pb.Network:
    return pb.Network(
        name=network.name,
        location_ids=sorted(network.location_ids),
        selectors=[
            pb.LocationSelector(
                types=[_TYPES[t] for t in sorted(s.types)],
                countries=sorted(s.countries),
                regions=sorted(s.regions),
                ship_enabled=s.ship_enabled,
                pickup_enabled=s.pickup_enabled,
            )
            for s in network.selectors
        ],
    )


def _reservation(msg: pb.Reservation) -> Reservation:
    lines = tuple(Line(ln.location_id, ln.sku, ln.qty) for ln in msg.lines)
    future = tuple(
        FutureLine(ln.location_id, ln.sku, ln.future_qty, ln.promise_by)
        for ln in msg.lines
        if ln.future_qty
    )
    return Reservation(msg.reservation_id, lines, _STATES[msg.state], msg.expires_at, future)


def _shortfalls(msgs: Sequence[pb.Shortfall]) -> tuple[Shortfall, ...]:
    return tuple(Shortfall(s.location_id, s.sku, s.requested, s.available) for s in msgs)


def _spread(targets: Sequence[str]) -> str:
    """One grpc target for several IPv4 servers (grpc's `ipv4:` scheme)."""
    for t in targets:
        host = t.rsplit(":", 1)[0]
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"several targets must each be an IPv4 address:port, got {t!r}"
            ) from None
    return "ipv4:" + ",".join(targets)


class OmnistockClient(SupplyCalls, StatesClient):
    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float = 2.0,
        attempts: int = 4,
        backoff: float = 0.05,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        """target: host:port, or several of them (server processes or machines serving the
        same store), over which calls are spread round robin, a server that is down left
        out until it is back; token: a bearer token, sent with every call; tls: credentials
        for a server that serves TLS (grpc.ssl_channel_credentials(root CA, key, chain))."""
        options: list[tuple[str, Any]] = []
        if not isinstance(target, str):
            target = _spread(target)
            options.append(("grpc.lb_policy_name", "round_robin"))
        self.target = target
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        bearer = () if token is None else (("authorization", f"Bearer {token}"),)
        self._opts: dict[str, Any] = {"timeout": timeout, "metadata": bearer}
        if tls is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(target, tls, options=options)
        self._availability = pb_grpc.AvailabilityServiceStub(self.channel)
        self._reservations = pb_grpc.ReservationServiceStub(self.channel)
        self._stock = pb_grpc.StockServiceStub(self.channel)

    async def __aenter__(self) -> OmnistockClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, send: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.attempts):
            try:
                return await send()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE or attempt == self.attempts - 1:
                    raise
                await asyncio.sleep(self.backoff * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def availability(
        self, skus: Sequence[str], *, location_ids: Sequence[str] = (), channel: str = ""
    ) -> list[Availability]:
        """channel: each row's `available` is then what that sales channel may hold."""
        request = pb.GetAvailabilityRequest(skus=skus, location_ids=location_ids, channel=channel)
        resp = await self._call(lambda: self._availability.GetAvailability(request, **self._opts))
        return [_availability(lv) for lv in resp.levels]

    async def network_availability(
        self, network: str, skus: Sequence[str], *, channel: str = ""
    ) -> list[NetworkLevel]:
        """For each sku (in order, once each): what the sales channel (none: no rule) may
        hold of it across the network, and at how many of its locations there is some."""
        request = pb.GetNetworkAvailabilityRequest(network=network, skus=skus, channel=channel)
        resp = await self._call(
            lambda: self._availability.GetNetworkAvailability(request, **self._opts)
        )
        return [NetworkLevel(lv.sku, lv.available, lv.locations) for lv in resp.levels]

    async def find_nearby(
        self,
        latitude: float,
        longitude: float,
        radius_km: float,
        lines: Sequence[BasketLine],
        *,
        fulfilment: Fulfilment = Fulfilment.ANY,
        types: Sequence[LocationType] = (),
        limit: int = 10,
        partial: bool = False,
        channel: str = "",
    ) -> list[NearbyHit]:
        """Locations that can fill the basket (or, with partial, part of it), best first;
        each hit's `available` follows the order of `lines` (for a channel: what it may
        hold there)."""
        request = pb.FindNearbyRequest(
            latitude=latitude,
            longitude=longitude,
            radius_km=radius_km,
            lines=[pb.BasketLine(sku=ln.sku, qty=ln.qty) for ln in lines],
            fulfilment=_FULFILMENTS[fulfilment],
            location_types=[_TYPES[t] for t in types],
            limit=limit,
            partial=partial,
            channel=channel,
        )
        resp = await self._call(lambda: self._availability.FindNearby(request, **self._opts))
        return [
            NearbyHit(
                location_from_pb(n.location, "location"),
                n.distance_km,
                tuple(x.available for x in n.lines),
            )
            for n in resp.locations
        ]

    async def reserve(
        self,
        reservation_id: str,
        lines: Sequence[Line],
        *,
        ttl_seconds: float = 0.0,
        channel: str = "",
        customer_id: str = "",
    ) -> HoldResult:
        """channel: the sales channel holding, held to its rules at each location.
        customer_id: the shopper, held to per-customer limits (FAILED_PRECONDITION past one).
        A line's promise_by (ms) lets what on hand cannot cover wait for supply due by then
        (the answer's `future` says what waits)."""
        request = pb.ReserveRequest(
            reservation_id=reservation_id,
            ttl_seconds=ttl_seconds,
            channel=channel,
            customer_id=customer_id,
            lines=[
                pb.ReservationLine(
                    location_id=ln.location, sku=ln.sku, qty=ln.qty, promise_by=ln.promise_by
                )
                for ln in lines
            ],
        )
        resp = await self._call(lambda: self._reservations.Reserve(request, **self._opts))
        if resp.HasField("reservation"):
            return HoldResult(_reservation(resp.reservation))
        return HoldResult(None, _shortfalls(resp.shortfalls))

    async def commit(self, reservation_id: str) -> Reservation:
        request = pb.CommitRequest(reservation_id=reservation_id)
        resp = await self._call(lambda: self._reservations.Commit(request, **self._opts))
        return _reservation(resp)

    async def release(self, reservation_id: str) -> Reservation:
        request = pb.ReleaseRequest(reservation_id=reservation_id)
        resp = await self._call(lambda: self._reservations.Release(request, **self._opts))
        return _reservation(resp)

    async def extend(self, reservation_id: str, ttl_seconds: float) -> Reservation:
        request = pb.ExtendRequest(reservation_id=reservation_id, ttl_seconds=ttl_seconds)
        resp = await self._call(lambda: self._reservations.Extend(request, **self._opts))
        return _reservation(resp)

    async def move_line(
        self,
        reservation_id: str,
        move_id: str,
        line: Line,
        to_location_id: str,
    ) -> HoldResult:
        """Moves the reservation's line of `line.sku` at `line.location` to `to_location_id`
        (line.qty: 0, or the line's qty: a line moves whole). The reservation after the
        move, or, the destination short, its shortfall (nothing moved). move_id names the
        move: a retry with it is safe, and answers the reservation as it is now."""
        request = pb.MoveLineRequest(
            reservation_id=reservation_id,
            move_id=move_id,
            location_id=line.location,
            sku=line.sku,
            qty=line.qty,
            to_location_id=to_location_id,
        )
        resp = await self._call(lambda: self._reservations.MoveLine(request, **self._opts))
        if resp.HasField("reservation"):
            return HoldResult(_reservation(resp.reservation))
        return HoldResult(None, _shortfalls(resp.shortfalls))

    async def get_reservation(self, reservation_id: str) -> Reservation:
        request = pb.GetReservationRequest(reservation_id=reservation_id)
        resp = await self._call(lambda: self._reservations.GetReservation(request, **self._opts))
        return _reservation(resp)

    # -- sales channels (admin) --------------------------------------------------------

    async def set_channel_rule(
        self,
        channel: str,
        rule: ChannelRule | None,
        *,
        location_id: str = "",
        location_type: LocationType | None = None,
    ) -> int:
        """Sets the channel's rule at one location, at a location type, or (neither) as the
        default; None removes it. Answers the rules' version."""
        msg = pb.ChannelRule(channel=channel, location_id=location_id, remove=rule is None)
        if location_type is not None:
            msg.location_type = _TYPES[location_type]
        if rule is not None:
            msg.buffer = rule.buffer
            if rule.max_share is not None:
                msg.max_share = rule.max_share
        request = pb.SetChannelRulesRequest(rules=[msg])
        resp = await self._call(lambda: self._stock.SetChannelRules(request, **self._opts))
        return int(resp.version)

    async def set_pool(self, location_id: str, sku: str, pool: Pool) -> bool:
        """Ring-fences `pool.units` of a row for `pool.channel` (0: ends the pool); whether
        it changed anything."""
        msg = pb.Pool(
            location_id=location_id,
            sku=sku,
            channel=pool.channel,
            units=pool.units,
            fallback=pool.fallback,
        )
        request = pb.SetPoolRequest(pools=[msg])
        resp = await self._call(lambda: self._stock.SetPool(request, **self._opts))
        return bool(resp.changed > 0)

    async def set_customer_limit(self, sku: str, limit: CustomerLimit | None) -> int:
        """At most `limit.max_units` of the sku per customer, held and bought within
        `limit.window_ms` (None: removes the limit); answers the rules' version."""
        msg = pb.CustomerLimit(sku=sku, remove=limit is None)
        if limit is not None:
            msg.max_units, msg.window_seconds = limit.max_units, limit.window_ms / 1000
        request = pb.SetCustomerLimitsRequest(limits=[msg])
        resp = await self._call(lambda: self._stock.SetCustomerLimits(request, **self._opts))
        return int(resp.version)

    async def set_bundles(self, bundles: Sequence[Bundle], *, remove: Sequence[str] = ()) -> int:
        """Sets each bundle (its sku: its components, each so many times) and removes those
        named in `remove`, all at once; answers the rules' version. A bundle sku is then
        read, held and allocated like any other: the engine acts on its components."""
        msgs = [
            pb.Bundle(
                sku=b.sku, components=[pb.BundleComponent(sku=c, qty=q) for c, q in b.components]
            )
            for b in bundles
        ] + [pb.Bundle(sku=sku, remove=True) for sku in remove]
        request = pb.SetBundlesRequest(bundles=msgs)
        resp = await self._call(lambda: self._stock.SetBundles(request, **self._opts))
        return int(resp.version)

    # -- location networks (admin) -----------------------------------------------------

    async def set_networks(
        self, networks: Sequence[Network], *, remove: Sequence[str] = ()
    ) -> dict[str, int]:
        """Sets each network (replacing one of its name) and removes those named in
        `remove`, all at once; answers each one's locations now (0 when removed)."""
        msgs = [_network(n) for n in networks] + [pb.Network(name=n, remove=True) for n in remove]
        request = pb.UpsertNetworksRequest(networks=msgs)
        resp = await self._call(lambda: self._stock.UpsertNetworks(request, **self._opts))
        return {n.name: n.members for n in resp.networks}
