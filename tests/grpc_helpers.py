"""Small builders for gRPC tests."""

from __future__ import annotations

import math
import time

import grpc

from engine.domain.geo import EARTH_RADIUS_KM
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.availability = pb_grpc.AvailabilityServiceStub(channel)
        self.reservations = pb_grpc.ReservationServiceStub(channel)
        self.stock = pb_grpc.StockServiceStub(channel)
        self.sourcing = pb_grpc.SourcingServiceStub(channel)
        self.operator = pb_grpc.OperatorServiceStub(channel)


def location(loc_id: str, lat: float = 51.5, lon: float = -0.12) -> pb.Location:
    return pb.Location(
        id=loc_id,
        name=loc_id,
        type=pb.LOCATION_TYPE_STORE,
        latitude=lat,
        longitude=lon,
        pickup_enabled=True,
        ship_enabled=True,
        active=True,
    )


def line(loc: str, sku: str, qty: int) -> pb.ReservationLine:
    return pb.ReservationLine(location_id=loc, sku=sku, qty=qty)


def count(event_id: str, loc: str, sku: str, qty: int, t: int | None = None) -> pb.StockEvent:
    return pb.StockEvent(
        event_id=event_id,
        location_id=loc,
        sku=sku,
        kind=pb.EVENT_KIND_COUNT,
        qty=qty,
        source_time=t or int(time.time() * 1000) - 1000,
    )


async def stock_up(stubs: Stubs, rows: dict[tuple[str, str], int]) -> None:
    """Creates the locations and counts each (location, sku) to the given on_hand."""
    locs = sorted({loc for loc, _ in rows})
    await stubs.stock.UpsertLocations(
        pb.UpsertLocationsRequest(locations=[location(loc) for loc in locs])
    )
    events = [count(f"seed:{loc}:{sku}", loc, sku, qty) for (loc, sku), qty in rows.items()]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))


def delta(
    event_id: str, loc: str, sku: str, qty: int, t: int, **fields: str | int
) -> pb.StockEvent:
    return pb.StockEvent(
        event_id=event_id,
        location_id=loc,
        sku=sku,
        kind=pb.EVENT_KIND_DELTA,
        qty=qty,
        source_time=t,
        **fields,  # type: ignore[arg-type]
    )


T0 = int(time.time() * 1000) - 3_600_000  # an hour before the tests: seeds are counted then


async def seed(stubs: Stubs, rows: dict[tuple[str, str], int]) -> None:
    """The locations, and each row counted to its on_hand at T0, so that a test's own
    events, at T0 + a little, come after the count."""
    locs = sorted({loc for loc, _ in rows})
    await stubs.stock.UpsertLocations(
        pb.UpsertLocationsRequest(locations=[location(loc) for loc in locs])
    )
    events = [count(f"seed:{loc}:{sku}", loc, sku, qty, T0) for (loc, sku), qty in rows.items()]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))


async def level(stubs: Stubs, loc: str, sku: str) -> pb.StockLevel:
    resp = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=[sku], location_ids=[loc])
    )
    return resp.levels[0]


# Locations due north of a point in London: along a meridian the great-circle distance is
# exactly R x the latitude difference, so each one's distance is known.
LAT, LON = 51.5074, -0.1278


def north(km: float) -> float:
    """The latitude `km` due north of (LAT, LON)."""
    return LAT + math.degrees(km / EARTH_RADIUS_KM)


def store(loc_id: str, km: float, **fields: object) -> pb.Location:
    values: dict[str, object] = {
        "id": loc_id,
        "name": f"Store {loc_id}",
        "type": pb.LOCATION_TYPE_STORE,
        "latitude": north(km),
        "longitude": LON,
        "pickup_enabled": True,
        "ship_enabled": True,
        "active": True,
    }
    values.update(fields)
    return pb.Location(**values)  # type: ignore[arg-type]


async def place(stubs: Stubs, stores: list[pb.Location], stock: dict[tuple[str, str], int]) -> None:
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=stores))
    events = [count(f"c:{loc}:{sku}", loc, sku, qty) for (loc, sku), qty in stock.items()]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events))
