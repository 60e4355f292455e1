"""Where places are: great-circle distances, the bounds of a search radius, and how an
order may be fulfilled at a location. Pure math; the index FindNearby and Allocate search
is engine/usecases/index.py."""

from __future__ import annotations

import math
from enum import Enum

from engine.domain.errors import InvalidArgument

EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG)
EDGE_KM = 1e-6  # a radius includes its edge to the millimetre (floating-point rounding)
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM


class Fulfilment(Enum):
    ANY = "ANY"
    PICKUP = "PICKUP"
    SHIP = "SHIP"


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def check_radius(km: float, field_name: str) -> None:
    """A search radius: above 0, at most half the earth's circumference."""
    if not (math.isfinite(km) and 0 < km <= HALF_CIRCUMFERENCE_KM):
        raise InvalidArgument(
            field_name, f"must be above 0 and at most {HALF_CIRCUMFERENCE_KM:.0f}, got {km}"
        )
