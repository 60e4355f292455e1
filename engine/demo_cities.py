"""The demo's places: the cities its stores are scattered around, each in its country, and
the distribution centre of each country. Pure data, and the slugs ids are made of."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class City:
    name: str
    country: str  # ISO 3166-1 alpha-2
    latitude: float
    longitude: float
    population_k: int  # city proper, thousands; only a weight
    # Compass bearing (degrees) from the centre towards open water, for a centre on a coast:
    # stores scattered that way are mirrored back onto land.
    sea_bearing: float | None = None

    @property
    def slug(self) -> str:
        return slugify(self.name)


# One distribution centre per country, in a real logistics hub: (town, latitude, longitude).
DC_SITES: dict[str, tuple[str, float, float]] = {
    "GB": ("Daventry", 52.2565, -1.1627),
    "FR": ("Orléans", 47.9030, 1.9093),
    "DE": ("Bad Hersfeld", 50.8683, 9.7070),
    "NL": ("Tilburg", 51.5555, 5.0913),
    "BE": ("Willebroek", 51.0603, 4.3600),
    "ES": ("Getafe", 40.3057, -3.7329),
    "IT": ("Piacenza", 45.0526, 9.6930),
    "US": ("Memphis", 35.1495, -90.0490),
}

CITIES: tuple[City, ...] = (
    # United Kingdom
    City("London", "GB", 51.5074, -0.1278, 8900),
    City("Birmingham", "GB", 52.4862, -1.8904, 1150),
    City("Manchester", "GB", 53.4808, -2.2426, 550),
    City("Leeds", "GB", 53.8008, -1.5491, 800),
    City("Glasgow", "GB", 55.8642, -4.2518, 630),
    City("Liverpool", "GB", 53.4084, -2.9916, 500, sea_bearing=270),
    City("Edinburgh", "GB", 55.9533, -3.1883, 525, sea_bearing=0),
    City("Bristol", "GB", 51.4545, -2.5879, 470),
    City("Newcastle upon Tyne", "GB", 54.9783, -1.6178, 300),
    # France
    City("Paris", "FR", 48.8566, 2.3522, 2100),
    City("Marseille", "FR", 43.2965, 5.3698, 870, sea_bearing=250),
    City("Lyon", "FR", 45.7640, 4.8357, 520),
    City("Toulouse", "FR", 43.6047, 1.4442, 490),
    City("Nantes", "FR", 47.2184, -1.5536, 320),
    City("Strasbourg", "FR", 48.5734, 7.7521, 290),
    City("Bordeaux", "FR", 44.8378, -0.5792, 260),
    City("Lille", "FR", 50.6292, 3.0573, 235),
    # Germany
    City("Berlin", "DE", 52.5200, 13.4050, 3650),
    City("Hamburg", "DE", 53.5511, 9.9937, 1850),
    City("Munich", "DE", 48.1351, 11.5820, 1490),
    City("Cologne", "DE", 50.9375, 6.9603, 1080),
    City("Frankfurt", "DE", 50.1109, 8.6821, 760),
    City("Stuttgart", "DE", 48.7758, 9.1829, 630),
    City("Düsseldorf", "DE", 51.2277, 6.7735, 620),
    City("Leipzig", "DE", 51.3397, 12.3731, 600),
    # Netherlands
    City("Amsterdam", "NL", 52.3676, 4.9041, 870),
    City("Rotterdam", "NL", 51.9244, 4.4777, 650, sea_bearing=315),
    City("The Hague", "NL", 52.0705, 4.3007, 550, sea_bearing=315),
    City("Utrecht", "NL", 52.0907, 5.1214, 360),
    # Belgium
    City("Brussels", "BE", 50.8503, 4.3517, 1200),
    City("Antwerp", "BE", 51.2194, 4.4025, 530),
    City("Ghent", "BE", 51.0543, 3.7174, 265),
    # Spain
    City("Madrid", "ES", 40.4168, -3.7038, 3300),
    City("Barcelona", "ES", 41.3851, 2.1734, 1620, sea_bearing=135),
    City("Valencia", "ES", 39.4699, -0.3763, 800, sea_bearing=90),
    City("Seville", "ES", 37.3891, -5.9845, 690),
    City("Zaragoza", "ES", 41.6488, -0.8891, 675),
    City("Málaga", "ES", 36.7213, -4.4214, 575, sea_bearing=180),
    # Italy
    City("Rome", "IT", 41.9028, 12.4964, 2870),
    City("Milan", "IT", 45.4642, 9.1900, 1370),
    City("Naples", "IT", 40.8518, 14.2681, 960, sea_bearing=200),
    City("Turin", "IT", 45.0703, 7.6869, 870),
    City("Genoa", "IT", 44.4056, 8.9463, 580, sea_bearing=180),
    City("Bologna", "IT", 44.4949, 11.3426, 390),
    City("Florence", "IT", 43.7696, 11.2558, 380),
    # United States
    City("New York", "US", 40.7128, -74.0060, 8300, sea_bearing=200),
    City("Los Angeles", "US", 34.0522, -118.2437, 3900),
    City("Chicago", "US", 41.8781, -87.6298, 2700, sea_bearing=90),
    City("Houston", "US", 29.7604, -95.3698, 2300),
    City("Phoenix", "US", 33.4484, -112.0740, 1600),
    City("Philadelphia", "US", 39.9526, -75.1652, 1580),
    City("San Francisco", "US", 37.7749, -122.4194, 870, sea_bearing=60),
    City("Seattle", "US", 47.6062, -122.3321, 740, sea_bearing=270),
    City("Boston", "US", 42.3601, -71.0589, 690, sea_bearing=90),
)


def slugify(text: str) -> str:
    """'Düsseldorf' -> 'dusseldorf', 'The Hague' -> 'the-hague': safe inside an id."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
