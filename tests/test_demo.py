"""The demo data set: deterministic, valid, and shaped like a real retailer."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any

import grpc
import pytest

from engine import demo_supply
from engine.demo import CITIES, DC_SITES, demo_locations, demo_skus, demo_stock, stores_per_city
from engine.domain.model import Location, LocationType, check_id, check_location
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .conftest import served

Rows = list[tuple[str, str, int]]

# Rough bounding boxes (lat_min, lat_max, lon_min, lon_max): catch a swapped sign or axis.
COUNTRY_BOXES = {
    "GB": (49.9, 58.7, -8.2, 1.8),
    "FR": (41.3, 51.1, -5.2, 9.6),
    "DE": (47.3, 55.1, 5.9, 15.1),
    "NL": (50.7, 53.6, 3.3, 7.3),
    "BE": (49.5, 51.5, 2.5, 6.4),
    "ES": (36.0, 43.8, -9.3, 3.4),
    "IT": (36.6, 47.1, 6.6, 18.6),
    "US": (24.5, 49.4, -124.8, -66.9),
}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


@pytest.fixture(scope="module")
def locations() -> list[Location]:
    return demo_locations()


@pytest.fixture(scope="module")
def skus() -> list[str]:
    return demo_skus()


@pytest.fixture(scope="module")
def rows(locations: list[Location], skus: list[str]) -> Rows:
    return list(demo_stock(locations, skus))


def of_type(locations: list[Location], kind: LocationType) -> list[Location]:
    return [loc for loc in locations if loc.type is kind]


def test_the_same_seed_gives_the_same_data() -> None:
    first, again = demo_locations(seed=3, stores=80), demo_locations(seed=3, stores=80)
    assert first == again
    skus = demo_skus(300)
    assert list(demo_stock(first, skus, seed=3)) == list(demo_stock(again, skus, seed=3))


def test_another_seed_gives_other_data() -> None:
    assert demo_locations(seed=1, stores=80) != demo_locations(seed=2, stores=80)
    locations, skus = demo_locations(stores=60), demo_skus(300)
    assert list(demo_stock(locations, skus, seed=1)) != list(demo_stock(locations, skus, seed=2))


def test_a_locations_stock_does_not_depend_on_the_others_listed(
    locations: list[Location], skus: list[str], rows: Rows
) -> None:
    one = locations[17]
    assert list(demo_stock([one], skus)) == [row for row in rows if row[0] == one.id]


def test_every_location_is_valid_and_ids_are_unique(locations: list[Location]) -> None:
    for i, location in enumerate(locations):
        check_location(location, f"locations[{i}]")
        assert location.name
    assert len({loc.id for loc in locations}) == len(locations)


def test_cities_are_many_distinct_and_inside_their_country() -> None:
    assert 45 <= len(CITIES) <= 60
    assert len({city.name for city in CITIES}) == len(CITIES)
    assert len({city.slug for city in CITIES}) == len(CITIES)
    for city in CITIES:
        lat_min, lat_max, lon_min, lon_max = COUNTRY_BOXES[city.country]
        assert lat_min <= city.latitude <= lat_max, city
        assert lon_min <= city.longitude <= lon_max, city
        assert city.population_k > 0
        check_id(city.slug, "slug")


@pytest.mark.parametrize("requested", [len(CITIES), 100, 240, 1000])
def test_the_store_count_is_the_requested_one(requested: int) -> None:
    stores = of_type(demo_locations(stores=requested), LocationType.STORE)
    assert len(stores) == requested


def test_fewer_stores_than_cities_go_to_the_biggest_cities() -> None:
    counts = stores_per_city(3)
    assert sum(counts) == 3
    chosen = {city.name for city, n in zip(CITIES, counts, strict=True) if n}
    biggest = sorted(CITIES, key=lambda c: -c.population_k)[:3]
    assert chosen == {city.name for city in biggest}


def test_every_city_has_a_store_and_bigger_cities_have_more(locations: list[Location]) -> None:
    per_city = Counter(loc.id.rsplit("-", 1)[0] for loc in of_type(locations, LocationType.STORE))
    for city in CITIES:
        assert per_city[f"store-{city.slug}"] >= 1, city.name
    by_size = sorted(CITIES, key=lambda c: c.population_k)
    assert per_city[f"store-{by_size[-1].slug}"] > 5 * per_city[f"store-{by_size[0].slug}"]


def test_stores_lie_within_25_km_of_a_city_centre(locations: list[Location]) -> None:
    for store in of_type(locations, LocationType.STORE) + of_type(
        locations, LocationType.DARK_STORE
    ):
        nearest = min(
            haversine_km(store.latitude, store.longitude, c.latitude, c.longitude) for c in CITIES
        )
        assert nearest <= 25.0, store


def test_stores_are_scattered_not_stacked_on_the_centre(locations: list[Location]) -> None:
    london = [loc for loc in locations if loc.id.startswith("store-london-")]
    centre = next(city for city in CITIES if city.name == "London")
    distances = [
        haversine_km(s.latitude, s.longitude, centre.latitude, centre.longitude) for s in london
    ]
    assert len({(s.latitude, s.longitude) for s in london}) == len(london)
    assert 2.0 < statistics.median(distances) < 15.0


def test_most_stores_offer_pickup_and_shipping_with_a_daily_capacity(
    locations: list[Location],
) -> None:
    stores = of_type(locations, LocationType.STORE)
    assert all(store.pickup_enabled for store in stores)
    no_ship = [store for store in stores if not store.ship_enabled]
    assert 0.05 < len(no_ship) / len(stores) < 0.25
    inactive = [store for store in stores if not store.active]
    assert 0 < len(inactive) / len(stores) < 0.06
    for store in stores:
        assert store.ship_capacity is not None
        if store.ship_enabled:
            assert 20 <= store.ship_capacity <= 200
        else:
            assert store.ship_capacity == 0


def test_there_is_a_distribution_centre_per_country(locations: list[Location]) -> None:
    dcs = of_type(locations, LocationType.DC)
    assert {dc.id for dc in dcs} == {f"dc-{country.lower()}" for country in DC_SITES}
    assert set(DC_SITES) == {city.country for city in CITIES}
    top_store_priority = max(loc.priority for loc in of_type(locations, LocationType.STORE))
    for dc in dcs:
        assert not dc.pickup_enabled and dc.ship_enabled and dc.active
        assert dc.ship_capacity is None
        assert dc.priority > top_store_priority
        lat_min, lat_max, lon_min, lon_max = COUNTRY_BOXES[dc.id.removeprefix("dc-").upper()]
        assert lat_min <= dc.latitude <= lat_max and lon_min <= dc.longitude <= lon_max


def test_dark_stores_ship_only_and_sit_in_the_biggest_cities(locations: list[Location]) -> None:
    dark = of_type(locations, LocationType.DARK_STORE)
    assert 3 <= len(dark) <= 12
    assert not any(store.pickup_enabled for store in dark)
    assert all(store.ship_enabled for store in dark)
    biggest = sorted(CITIES, key=lambda c: -c.population_k)[:4]
    for store in dark:
        assert any(store.id.startswith(f"dark-{city.slug}-") for city in biggest), store.id


def test_skus_are_valid_unique_ids() -> None:
    skus = demo_skus(2000)
    assert len(skus) == len(set(skus)) == 2000
    assert skus[122] == "SKU-000123"
    for sku in skus:
        check_id(sku, "sku")
    assert demo_skus(0) == []


def test_stores_carry_a_subset_and_dcs_nearly_all(
    locations: list[Location], skus: list[str], rows: Rows
) -> None:
    carried: dict[str, set[str]] = defaultdict(set)
    for location, sku, _ in rows:
        carried[location].add(sku)
    for store in of_type(locations, LocationType.STORE):
        assert 0.1 * len(skus) < len(carried[store.id]) < 0.5 * len(skus)
    shares = [len(carried[s.id]) / len(skus) for s in of_type(locations, LocationType.STORE)]
    assert 0.25 < statistics.mean(shares) < 0.35
    for dc in of_type(locations, LocationType.DC):
        assert len(carried[dc.id]) >= 0.95 * len(skus)
    assert set(carried) <= {loc.id for loc in locations}
    assert set().union(*carried.values()) <= set(skus)


def test_each_location_lists_a_sku_once(rows: Rows) -> None:
    assert len({(location, sku) for location, sku, _ in rows}) == len(rows)


def test_popular_skus_are_carried_by_more_stores(
    locations: list[Location], skus: list[str], rows: Rows
) -> None:
    store_ids = {s.id for s in of_type(locations, LocationType.STORE)}
    stores_per_sku = Counter(sku for location, sku, _ in rows if location in store_ids)
    head = statistics.mean(stores_per_sku[sku] for sku in skus[:100])
    tail = statistics.mean(stores_per_sku[sku] for sku in skus[-100:])
    assert head > 2 * tail
    assert stores_per_sku[skus[0]] >= 0.9 * len(store_ids)


def test_quantities_are_ints_with_a_heavy_tail(locations: list[Location], rows: Rows) -> None:
    # (no sign check: demo_stock clips every quantity to 0..MAX_QTY, so one could not fail)
    assert all(type(qty) is int for _, _, qty in rows)
    kinds = {loc.id: loc.type for loc in locations}
    store_qty = [q for loc, _, q in rows if kinds[loc] is LocationType.STORE]
    dc_qty = [q for loc, _, q in rows if kinds[loc] is LocationType.DC]
    store_median = statistics.median(store_qty)
    assert 1 <= store_median <= 20
    assert max(store_qty) > 20 * store_median
    assert 0.01 < store_qty.count(0) / len(store_qty) < 0.2
    assert statistics.median(dc_qty) >= 100
    assert max(dc_qty) >= 1000
    assert statistics.median(dc_qty) > 10 * store_median


def test_no_skus_give_no_rows(locations: list[Location]) -> None:
    assert list(demo_stock(locations, [])) == []


async def test_the_demo_served_sells_through_its_channels(redis: Any, one_redis_url: str) -> None:
    # given a server that loads the demo data into its empty store (as `make run` does)
    async with served(one_redis_url, demo=True) as (app, stubs):

        async def available(location: str, sku: str, channel: str) -> tuple[int, int]:
            got = await stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=[sku], location_ids=[location], channel=channel)
            )
            return got.levels[0].available, got.levels[0].on_hand

        # then the web keeps off a store's last 2 units, a marketplace holds at most 30%
        plain, on_hand = await available("store-london-0001", "SKU-000001", "")
        assert plain == on_hand > 2
        assert (await available("store-london-0001", "SKU-000001", "web"))[0] == plain - 2
        marketplace = (await available("store-london-0001", "SKU-000001", "marketplace-x"))[0]
        assert marketplace == on_hand * 3 // 10
        # and 50 units of SKU-000007 at the London DC are the app's launch pool
        dc, _ = await available("dc-gb", "SKU-000007", "")
        assert dc > 50
        assert (await available("dc-gb", "SKU-000007", "web"))[0] == dc - 50
        assert (await available("dc-gb", "SKU-000007", "app"))[0] == dc  # with fallback
        # limited to 2 a customer
        line = pb.ReservationLine(location_id="dc-gb", sku="SKU-000007", qty=3)
        request = pb.ReserveRequest(reservation_id="c1", lines=[line], customer_id="ann")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.reservations.Reserve(request)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # units in other states, and a web order from the UK DC returned at a London store,
        # waiting there for inspection
        got = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(
                skus=["SKU-000001", "SKU-000002"], location_ids=["store-london-0001"], states=True
            )
        )
        assert [(lv.returned, lv.damaged) for lv in got.levels] == [(1, 0), (0, 3)]
        order = await stubs.reservations.GetReservation(
            pb.GetReservationRequest(reservation_id="demo-web-order-1")
        )
        assert order.state == pb.RESERVATION_STATE_COMMITTED
        # and a UK and a French shipping network: the country's DC and its stores that ship
        for name, country in (("uk-ship", "GB"), ("fr-ship", "FR")):
            got = await stubs.availability.GetNetworkAvailability(
                pb.GetNetworkAvailabilityRequest(
                    network=name, skus=["SKU-000001"], channel="web", include_members=True
                )
            )
            assert list(got.member_ids) == shipping_from(country)
            summed = sum([(await available(loc, "SKU-000001", "web"))[0] for loc in got.member_ids])
            assert got.levels[0].available == summed > 0
        # and a kit of the two best sellers is as available as the scarcer of them
        got = await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(
                skus=["KIT-STARTER", "SKU-000001", "SKU-000002"], location_ids=["dc-gb"]
            )
        )
        kit, one, two = (lv.available for lv in got.levels)
        assert kit == min(one, two) > 0
        # purchase orders due at the DCs over the next two weeks, and a transfer in transit
        # from the London DC to a London store (issue 17)
        promised = await stubs.availability.GetPromise(
            pb.GetPromiseRequest(skus=["SKU-000001"], location_ids=["dc-gb", "store-london-0001"])
        )
        dc, store = promised.promises
        assert dc.incoming > 0 and 0 < len(dc.steps) <= 2
        assert max(s.at for s in dc.steps) <= promised.as_of + 14 * 24 * 3600 * 1000
        assert store.incoming == 6 and store.steps[-1].units == store.available_now + 6
        # and a preorder at the French DC: every unit there held, 5 more waiting for supply
        preorder = await stubs.reservations.GetReservation(
            pb.GetReservationRequest(reservation_id="demo-preorder-1")
        )
        assert preorder.state == pb.RESERVATION_STATE_HELD
        (line,) = preorder.lines
        assert (line.location_id, line.future_qty, line.promise_broken) == ("dc-fr", 5, False)
        assert await available("dc-fr", line.sku, "") == (0, line.qty - 5)
        # which a load redone (a later promise date) leaves as it is
        await demo_supply.load_preorder(app.storage, app.reservations, app.clock)
        again = await stubs.reservations.GetReservation(
            pb.GetReservationRequest(reservation_id="demo-preorder-1")
        )
        assert again == preorder


def shipping_from(country: str) -> list[str]:
    """The demo's locations a country's orders ship from: its DC, its stores that ship."""
    return sorted(
        loc.id
        for loc in demo_locations()
        if loc.active
        and loc.country == country
        and (loc.type is LocationType.DC or (loc.type is LocationType.STORE and loc.ship_enabled))
    )


def test_every_location_has_its_country_and_a_store_its_citys_region(
    locations: list[Location],
) -> None:
    by_slug = {city.slug: city for city in CITIES}
    for loc in locations:
        if loc.type is LocationType.DC:
            assert (loc.id, loc.region) == (f"dc-{loc.country.lower()}", "")
        else:
            assert loc.id.rsplit("-", 1)[0].split("-", 1)[1] == loc.region  # store-london-0001
            assert loc.country == by_slug[loc.region].country
    assert len(shipping_from("GB")) > 10 and len(shipping_from("FR")) > 10
