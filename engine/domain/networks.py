"""Location networks: named sets of locations (a country's shipping network, a city's pickup
stores), by an explicit list and by selectors (types, countries, regions, what a location
offers), and the rules for checking them. What a network's members are follows from the
locations as they are now. Pure: no Redis, no gRPC."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidArgument
from engine.domain.model import (
    MAX_LOCATIONS,
    MAX_SKUS,
    MAX_TYPES,
    Location,
    LocationType,
    check_id,
    check_size,
)
from engine.domain.places import COUNTRIES, check_country

MAX_NETWORKS = 100  # a call's
MAX_SELECTORS = 16  # a network's
MAX_REGIONS = 1000  # a selector's
# The rows (members x skus) one GetNetworkAvailability may sum: 200 skus over a network of
# 1,000 locations, or 50 over 4,000 (bench/RESULTS.md has what a read of them costs).
MAX_NETWORK_CELLS = 200_000


@dataclass(frozen=True, slots=True)
class Selector:
    """Locations matching every condition given; an empty one is no condition."""

    types: frozenset[LocationType] = frozenset()
    countries: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    ship_enabled: bool = False  # only locations that ship
    pickup_enabled: bool = False  # only locations that offer pickup

    def matches(self, location: Location) -> bool:
        return (
            (not self.types or location.type in self.types)
            and (not self.countries or location.country in self.countries)
            and (not self.regions or location.region in self.regions)
            and (location.ship_enabled or not self.ship_enabled)
            and (location.pickup_enabled or not self.pickup_enabled)
        )


@dataclass(frozen=True, slots=True)
class Network:
    """A named set of locations: those listed, and those any selector matches, of those
    active."""

    name: str
    location_ids: frozenset[str] = frozenset()
    selectors: tuple[Selector, ...] = ()

    def members(self, locations: Mapping[str, Location]) -> tuple[str, ...]:
        """The ids of its locations among `locations`, sorted."""
        return tuple(
            sorted(
                loc.id
                for loc in locations.values()
                if loc.active
                and (loc.id in self.location_ids or any(s.matches(loc) for s in self.selectors))
            )
        )


@dataclass(frozen=True, slots=True)
class NetworkLevel:
    """A sku across a network: what a channel may hold of it, summed over the members, and
    how many of them have some."""

    sku: str
    available: int
    locations: int


def check_selector(selector: Selector, field: str) -> Selector:
    check_size(len(selector.types), f"{field}.types", MAX_TYPES)
    check_size(len(selector.countries), f"{field}.countries", len(COUNTRIES))
    check_size(len(selector.regions), f"{field}.regions", MAX_REGIONS)
    for i, country in enumerate(sorted(selector.countries)):
        check_country(country, f"{field}.countries[{i}]")
    for i, region in enumerate(sorted(selector.regions)):
        check_id(region, f"{field}.regions[{i}]")
    return selector


def check_network(network: Network, field: str) -> Network:
    """A network to set: a name, and a list, selectors or both (a removal needs its name only)."""
    check_id(network.name, f"{field}.name")
    check_size(len(network.location_ids), f"{field}.location_ids", MAX_LOCATIONS)
    check_size(len(network.selectors), f"{field}.selectors", MAX_SELECTORS)
    for i, loc in enumerate(sorted(network.location_ids)):
        check_id(loc, f"{field}.location_ids[{i}]")
    for i, selector in enumerate(network.selectors):
        check_selector(selector, f"{field}.selectors[{i}]")
    if not network.location_ids and not network.selectors:
        raise InvalidArgument(
            f"{field}.location_ids", "a network needs location_ids, selectors or both"
        )
    return network


def check_networks(names: Iterable[str]) -> None:
    """Each network of a call once."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise InvalidArgument(f"networks[{i}].name", f"{name!r} is given twice")
        seen.add(name)


def check_listing(network: str, skus: Sequence[str], channel: str) -> list[str]:
    """A GetNetworkAvailability's network, skus (each once, in order) and channel."""
    check_id(network, "network")
    if channel:
        check_id(channel, "channel")
    check_size(len(skus), "skus", MAX_SKUS)
    if not skus:
        raise InvalidArgument("skus", "at least one sku is required")
    return list(dict.fromkeys(check_id(s, f"skus[{i}]") for i, s in enumerate(skus)))


def check_cells(skus: int, members: int) -> None:
    if skus * members > MAX_NETWORK_CELLS:
        raise InvalidArgument(
            "skus", f"{skus} skus x {members} locations is over {MAX_NETWORK_CELLS} rows"
        )
