"""Location networks from their messages (StockService.UpsertNetworks), each sized before it
is read and checked naming its field; and a listing across one as its message
(AvailabilityService.GetNetworkAvailability)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.api.convert import types_from_pb
from engine.domain.model import MAX_LOCATIONS, check_size
from engine.domain.networks import (
    MAX_NETWORKS,
    MAX_REGIONS,
    MAX_SELECTORS,
    Network,
    Selector,
)
from engine.domain.places import COUNTRIES
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.usecases.networks import Listing, NetworkChange


def selector_from_pb(msg: pb.LocationSelector, field: str) -> Selector:
    check_size(len(msg.countries), f"{field}.countries", len(COUNTRIES))
    check_size(len(msg.regions), f"{field}.regions", MAX_REGIONS)
    return Selector(
        frozenset(types_from_pb(msg.types, f"{field}.types")),
        frozenset(msg.countries),
        frozenset(msg.regions),
        msg.ship_enabled,
        msg.pickup_enabled,
    )


def network_change(msg: pb.Network, field: str) -> NetworkChange:
    check_size(len(msg.location_ids), f"{field}.location_ids", MAX_LOCATIONS)
    check_size(len(msg.selectors), f"{field}.selectors", MAX_SELECTORS)
    selectors = tuple(
        selector_from_pb(s, f"{field}.selectors[{i}]") for i, s in enumerate(msg.selectors)
    )
    return NetworkChange(Network(msg.name, frozenset(msg.location_ids), selectors), msg.remove)


def network_changes(msgs: Sequence[pb.Network]) -> list[NetworkChange]:
    check_size(len(msgs), "networks", MAX_NETWORKS)
    return [network_change(m, f"networks[{i}]") for i, m in enumerate(msgs)]


def listing_pb(listing: Listing, include_members: bool) -> pb.GetNetworkAvailabilityResponse:
    return pb.GetNetworkAvailabilityResponse(
        network=listing.network,
        levels=[
            pb.NetworkLevel(sku=lv.sku, available=lv.available, locations=lv.locations)
            for lv in listing.levels
        ],
        members=len(listing.members),
        member_ids=listing.members if include_members else (),
    )
