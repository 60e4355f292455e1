"""The demo data set: a plausible retailer to serve and benchmark against. Owns the list of
cities, the stores, dark stores and distribution centres placed around them, the SKU ids,
and the stock rows they hold. Pure Python and numpy: no Redis, no gRPC. The same seed
always gives the same data.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from engine import demo_supply
from engine.demo_cities import CITIES, DC_SITES, City
from engine.domain.bundles import Bundle
from engine.domain.clock import Clock
from engine.domain.model import MAX_QTY, EventKind, Line, Location, LocationType, StockEvent
from engine.domain.networks import Network, Selector
from engine.domain.returns import Return, ReturnLine
from engine.domain.rules import ChannelRule, CustomerLimit, Pool
from engine.domain.states import StockState
from engine.store.storage import Storage
from engine.usecases.bundles import set_bundles
from engine.usecases.channels import ChannelRules, RuleChange
from engine.usecases.locations import LocationRegistry
from engine.usecases.networks import NetworkChange, Networks
from engine.usecases.reservations import Reservations
from engine.usecases.returns import Returns
from engine.usecases.supply import Supplies
from engine.usecases.transfers import Transfers

log = logging.getLogger(__name__)

KM_PER_DEGREE_LAT = 111.32
# Store scatter around a city centre: sigma grows with city size, within these bounds, and
# each axis is clipped at MAX_SIGMAS, so no store lies farther than ~21 km from its centre.
SIGMA_KM = 3.0
MIN_SIGMA_KM = 1.5
MAX_SIGMA_KM = 6.0
MAX_SIGMAS = 2.5
SHIP_DISABLED_SHARE = 0.15
INACTIVE_SHARE = 0.02
STORE_PRIORITY = 0
DARK_STORE_PRIORITY = 5
DC_PRIORITY = 10
DARK_STORE_CITIES = 4
DARK_STORES_PER_CITY = 2
ZIPF_EXPONENT = 1.0
STORE_ASSORTMENT = (0.2, 0.4)  # share of the catalogue a store carries; mean 0.3
DARK_STORE_ASSORTMENT = 0.25
DC_ASSORTMENT = 0.97

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


def offset_km(
    latitude: float, longitude: float, north_km: float, east_km: float
) -> tuple[float, float]:
    """The point `north_km` north and `east_km` east of (latitude, longitude)."""
    lat = latitude + north_km / KM_PER_DEGREE_LAT
    lon = longitude + east_km / (KM_PER_DEGREE_LAT * math.cos(math.radians(latitude)))
    return round(lat, 6), round(lon, 6)


def stores_per_city(stores: int) -> list[int]:
    """Splits `stores` over CITIES in proportion to population, at least one per city
    (largest remainder). Fewer stores than cities: one each in the biggest cities."""
    if stores < 0:
        raise ValueError(f"stores must not be negative, got {stores}")
    weights = np.array([c.population_k for c in CITIES], dtype=np.float64)
    if stores < len(CITIES):
        chosen = set(np.argsort(-weights, kind="stable")[:stores].tolist())
        return [1 if i in chosen else 0 for i in range(len(CITIES))]
    share = weights / weights.sum() * (stores - len(CITIES))
    counts = np.floor(share).astype(np.int64)
    leftover = stores - len(CITIES) - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:leftover]] += 1
    return [int(n) + 1 for n in counts]


def _sigma_km(city: City) -> float:
    return min(MAX_SIGMA_KM, max(MIN_SIGMA_KM, SIGMA_KM * math.sqrt(city.population_k / 1000)))


def scatter(city: City, count: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """`count` points around the city centre, as (latitude, longitude): normal offsets,
    each axis clipped at MAX_SIGMAS, mirrored away from the sea for a coastal centre."""
    sigma = _sigma_km(city)
    km = np.clip(rng.normal(0.0, sigma, (count, 2)), -MAX_SIGMAS * sigma, MAX_SIGMAS * sigma)
    if city.sea_bearing is not None:
        bearing = math.radians(city.sea_bearing)
        seaward = np.array([math.cos(bearing), math.sin(bearing)])  # (north, east)
        along = km @ seaward
        km -= 2.0 * np.maximum(along, 0.0)[:, None] * seaward
    return [offset_km(city.latitude, city.longitude, n, e) for n, e in km.tolist()]


def _city_stores(city: City, count: int, rng: np.random.Generator) -> list[Location]:
    points = scatter(city, count, rng)
    ships = rng.random(count) >= SHIP_DISABLED_SHARE
    active = rng.random(count) >= INACTIVE_SHARE
    capacity = rng.integers(20, 201, count)
    stores = []
    for n in range(count):
        lat, lon = points[n]
        stores.append(
            Location(
                id=f"store-{city.slug}-{n + 1:04d}",
                name=f"{city.name} {n + 1}",
                type=LocationType.STORE,
                latitude=lat,
                longitude=lon,
                ship_enabled=bool(ships[n]),
                ship_capacity=int(capacity[n]) if ships[n] else 0,
                priority=STORE_PRIORITY,
                active=bool(active[n]),
                country=city.country,
                region=city.slug,
            )
        )
    return stores


def _dark_stores(rng: np.random.Generator) -> list[Location]:
    biggest = sorted(CITIES, key=lambda c: -c.population_k)[:DARK_STORE_CITIES]
    dark = []
    for city in biggest:
        for n, (lat, lon) in enumerate(scatter(city, DARK_STORES_PER_CITY, rng)):
            dark.append(
                Location(
                    id=f"dark-{city.slug}-{n + 1:02d}",
                    name=f"{city.name} Dark Store {n + 1}",
                    type=LocationType.DARK_STORE,
                    latitude=lat,
                    longitude=lon,
                    pickup_enabled=False,
                    ship_capacity=int(rng.integers(300, 801)),
                    priority=DARK_STORE_PRIORITY,
                    country=city.country,
                    region=city.slug,
                )
            )
    return dark


def _distribution_centres() -> list[Location]:
    return [
        Location(
            id=f"dc-{country.lower()}",
            name=f"{town} DC ({country})",
            type=LocationType.DC,
            latitude=lat,
            longitude=lon,
            pickup_enabled=False,
            ship_capacity=None,
            priority=DC_PRIORITY,
            country=country,
        )
        for country, (town, lat, lon) in DC_SITES.items()
    ]


def demo_locations(seed: int = 7, stores: int = 240) -> list[Location]:
    """`stores` stores around CITIES, DARK_STORE_CITIES * DARK_STORES_PER_CITY dark stores
    in the biggest cities, and one distribution centre per country."""
    rng = np.random.default_rng(seed)
    locations: list[Location] = []
    for city, count in zip(CITIES, stores_per_city(stores), strict=True):
        locations.extend(_city_stores(city, count, rng))
    locations.extend(_dark_stores(rng))
    locations.extend(_distribution_centres())
    return locations


def demo_skus(count: int = 2000) -> list[str]:
    """`SKU-000001` .. : listed from the most popular to the least."""
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    return [f"SKU-{i:06d}" for i in range(1, count + 1)]


def popularity(count: int) -> Floats:
    """Zipf-like weights, summing to 1: the sku at index 0 sells best."""
    weights: Floats = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** ZIPF_EXPONENT
    return weights / weights.sum() if count else weights


def _location_rng(seed: int, location_id: str) -> np.random.Generator:
    # Per location, so one location's rows do not depend on which others are listed.
    digest = hashlib.blake2b(location_id.encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "big")])


def _assortment(
    rng: np.random.Generator, weights: Floats, share: float, weighted: bool = True
) -> Ints:
    """Indices of round(share * len) skus, sampled without replacement in proportion to
    `weights` (Gumbel top-k) or uniformly, in catalogue order."""
    size = min(len(weights), round(share * len(weights)))
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    keys = rng.gumbel(size=len(weights))
    if weighted:
        keys += np.log(weights)
    chosen: Ints = np.sort(np.argpartition(-keys, size - 1)[:size])
    return chosen


def _store_quantities(rng: np.random.Generator, pop: Floats) -> Floats:
    """Mostly 0-20, zeros where sold out, popular skus deeper; now and then a pallet."""
    mean = 4.0 + 16.0 * np.sqrt(pop)
    shape = 2.0
    qty: Floats = rng.negative_binomial(shape, shape / (shape + mean)).astype(np.float64)
    pallets = rng.random(len(pop)) < 0.005
    qty[pallets] = np.rint(rng.lognormal(math.log(150.0), 0.5, int(pallets.sum())))
    return qty


def _dc_quantities(rng: np.random.Generator, pop: Floats) -> Floats:
    """Hundreds to thousands, deeper for popular skus."""
    median = 300.0 + 2000.0 * np.sqrt(pop)
    qty: Floats = np.rint(rng.lognormal(np.log(median), 0.8))
    return qty


def _rows_for(location: Location, weights: Floats, rng: np.random.Generator) -> tuple[Ints, Floats]:
    relative = weights / weights.max()  # 1.0 for the best seller
    if location.type is LocationType.DC:
        carried = _assortment(rng, weights, DC_ASSORTMENT, weighted=False)
        return carried, _dc_quantities(rng, relative[carried])
    if location.type is LocationType.DARK_STORE:
        carried = _assortment(rng, weights, DARK_STORE_ASSORTMENT)
    else:
        carried = _assortment(rng, weights, float(rng.uniform(*STORE_ASSORTMENT)))
    return carried, _store_quantities(rng, relative[carried])


def demo_stock(
    locations: Sequence[Location], skus: Sequence[str], seed: int = 7
) -> Iterator[tuple[str, str, int]]:
    """(location_id, sku, on_hand) rows. `skus` are read as ordered by popularity (as
    demo_skus lists them). Stores and dark stores carry a popularity-weighted subset of
    the catalogue, distribution centres nearly all of it."""
    if not skus:
        return
    weights = popularity(len(skus))
    for location in locations:
        carried, qty = _rows_for(location, weights, _location_rng(seed, location.id))
        quantities = np.clip(qty, 0, MAX_QTY).astype(np.int64).tolist()
        for index, on_hand in zip(carried.tolist(), quantities, strict=True):
            yield location.id, skus[index], on_hand


# The demo's sales channels: the web never takes a store's last 2 units (for walk-ins), a
# marketplace holds at most 30% of any row; a launch pool for the app, 2 a customer a day.
DEMO_RULES = (
    RuleChange("web", location_type=LocationType.STORE, rule=ChannelRule(buffer=2)),
    RuleChange("marketplace-x", rule=ChannelRule(max_share=0.3)),
)
DEMO_POOLS = (("dc-gb", "SKU-000007", Pool("app", 50, fallback=True)),)
DEMO_LIMITS = {"SKU-000007": CustomerLimit(2, 24 * 3600 * 1000)}
# The demo's kits (no stock of their own: as many as their components make, wherever they are).
DEMO_BUNDLES = (
    Bundle("KIT-STARTER", (("SKU-000001", 1), ("SKU-000002", 1))),  # the two best sellers
    Bundle("KIT-DUO", (("SKU-000003", 2), ("SKU-000010", 1))),  # two of one, one of another
    Bundle("KIT-4PACK", (("SKU-000004", 4),)),  # a four-pack of one sku
)


def _shipping(country: str) -> Network:
    """A country's shipping network: its distribution centre and its stores that ship."""
    here = frozenset({country})
    return Network(
        f"{country.lower()}-ship" if country != "GB" else "uk-ship",
        selectors=(
            Selector(frozenset({LocationType.DC}), here),
            Selector(frozenset({LocationType.STORE}), here, ship_enabled=True),
        ),
    )


# The demo's networks: where a UK and a French order may ship from, and the London stores a
# shopper may collect from.
DEMO_NETWORKS = (
    _shipping("GB"),
    _shipping("FR"),
    Network(
        "london-pickup", selectors=(Selector(regions=frozenset({"london"}), pickup_enabled=True),)
    ),
)


async def load(
    storage: Storage,
    locations: LocationRegistry,
    clock: Clock,
    channels: ChannelRules,
    networks: Networks,
) -> None:
    """Counts every demo row in as COUNT events (the one way stock enters), a few batches in
    flight at once, logging progress; then the channels' rules, pools, limits and kits;
    locations last (then the networks of them, and the future supply: engine/demo_supply.py),
    so a load cut short is redone at the next start (each step is idempotent)."""
    started = time.perf_counter()
    locs = demo_locations()
    now = clock.now_ms()
    batches: list[tuple[str, list[StockEvent]]] = []
    current: dict[str, list[StockEvent]] = {}
    for location, sku, qty in demo_stock(locs, demo_skus()):
        event = StockEvent(f"demo:{location}:{sku}", location, sku, EventKind.COUNT, qty, now - 1)
        current.setdefault(location, []).append(event)
        if len(current[location]) >= 500:
            batches.append((location, current.pop(location)))
    batches += current.items()
    total = sum(len(events) for _, events in batches)
    done, gate, next_report = 0, asyncio.Semaphore(4), 0.25

    async def apply(location: str, events: list[StockEvent]) -> None:
        nonlocal done, next_report
        async with gate:
            await storage.apply_events(location, events, now)
        done += len(events)
        if done / total >= next_report:
            log.info("demo data: %d of %d stock rows loaded", done, total)
            next_report += 0.25

    await asyncio.gather(*(apply(loc, events) for loc, events in batches))
    await channels.set(DEMO_RULES)
    await channels.set_limits(DEMO_LIMITS)
    await set_bundles(channels, [(bundle, False) for bundle in DEMO_BUNDLES])
    for location, sku, pool in DEMO_POOLS:
        await storage.set_pools(location, [(sku, pool)])
    await locations.upsert(locs)
    await networks.upsert([NetworkChange(network) for network in DEMO_NETWORKS])
    supplies = Supplies(storage, locations, networks, clock)
    await demo_supply.load(supplies, Transfers(storage, locations, clock), locs, clock)
    took = time.perf_counter() - started
    log.info("demo data: %d locations, %d stock rows in %.1fs", len(locs), total, took)


# Stock in other states (issue 17): damaged units on a London shelf, a pallet in quality
# control at the UK DC; and a web order shipped from the UK DC, one unit of it brought back
# to a London store, where it waits for inspection (`returned`).
DEMO_STATES = (
    ("store-london-0001", "SKU-000002", StockState.DAMAGED, 3),
    ("dc-gb", "SKU-000003", StockState.QUALITY_CONTROL, 40),
)
DEMO_WEB_ORDER = ("demo-web-order-1", Line("dc-gb", "SKU-000001", 2))
DEMO_RETURN = Return(
    "demo-return-1", "store-london-0001", (ReturnLine("SKU-000001", 1),), DEMO_WEB_ORDER[0]
)


async def load_returns(
    storage: Storage, reservations: Reservations, returns: Returns, clock: Clock
) -> None:
    """The demo's units in other states, and its web order returned at a store: each step
    idempotent (a counted event id, a reservation id, a return id), so a restart redoes
    nothing twice."""
    now = clock.now_ms()
    for location, sku, state, qty in DEMO_STATES:
        counted = StockEvent(
            f"demo:{location}:{sku}:{state}", location, sku, EventKind.COUNT, qty, now - 1
        )
        await storage.apply_events(location, [replace(counted, state=state)], now)
    order, line = DEMO_WEB_ORDER
    if (await reservations.reserve(order, [line], ttl_seconds=600, channel="web")).ok:
        await reservations.commit(order)
        await returns.record(DEMO_RETURN)
    log.info("demo data: a web order from %s returned at %s", line.location, DEMO_RETURN.location)
