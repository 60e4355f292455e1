"""The demo's future supply (issue 17): purchase orders of the popular skus due at each
distribution centre over the next two weeks, and a transfer in transit from the London DC
to a London store; and a preorder at the French DC waiting for part of its purchase order.
Loaded after the demo's locations; each step is idempotent, so a load cut short is redone at
the next start (a transfer or preorder made by an earlier attempt stands)."""

from __future__ import annotations

import contextlib
import logging

from engine.domain.clock import Clock
from engine.domain.errors import AlreadyExists, FailedPrecondition
from engine.domain.model import Line, Location, LocationType
from engine.domain.supply import DAY_MS, Supply, SupplyKind
from engine.domain.transfers import Transfer
from engine.store.storage import Storage
from engine.usecases.reservations import Reservations
from engine.usecases.supply import Supplies
from engine.usecases.transfers import Transfers

log = logging.getLogger(__name__)

# Each DC expects the 10 most popular skus: a purchase order line each, due 2 to 14 days
# from the load, and an ASN (on its way from the supplier) of the first due tomorrow.
DEMO_PO_SKUS = 10
DEMO_TRANSFER = ("demo-transfer-1", "dc-gb", "store-london-0001", (("SKU-000001", 6),))
# A preorder of every unit of a sku at the French DC and 5 more, promised within 15 days:
# the 5 wait for its purchase order (due within 14).
DEMO_PREORDER = ("demo-preorder-1", "dc-fr", "SKU-000004", 5)


def demo_supplies(locations: list[Location], now: int) -> list[Supply]:
    dcs = sorted(loc.id for loc in locations if loc.type is LocationType.DC)
    out = []
    for d, dc in enumerate(dcs):
        for n in range(DEMO_PO_SKUS):
            due = now + (2 + (d + n) % 13) * DAY_MS
            sku = f"SKU-{n + 1:06d}"
            out.append(Supply(f"demo-po-{dc}-{n + 1}", dc, sku, 24 * (1 + n % 4), due))
        asn = Supply(f"demo-asn-{dc}", dc, "SKU-000001", 48, now + DAY_MS, SupplyKind.ASN)
        out.append(asn)
    return out


async def load(
    supplies: Supplies, transfers: Transfers, locations: list[Location], clock: Clock
) -> None:
    now = clock.now_ms()
    await supplies.upsert(demo_supplies(locations, now))
    tid, source, to, lines = DEMO_TRANSFER
    with contextlib.suppress(AlreadyExists):  # made by a load cut short: it stands
        await transfers.create(Transfer(tid, source, to, lines, now + 2 * DAY_MS))
    try:
        await transfers.ship(tid)
    except FailedPrecondition as exc:
        log.warning("demo data: the demo transfer was not shipped: %s", exc)


async def load_preorder(storage: Storage, reservations: Reservations, clock: Clock) -> None:
    rid, location, sku, beyond = DEMO_PREORDER
    (row,) = await storage.rows([(location, sku)])
    line = Line(location, sku, row.available + beyond, clock.now_ms() + 15 * DAY_MS)
    try:
        held = await reservations.reserve(rid, [line])
    except AlreadyExists:  # made by an earlier attempt (another promise date): it stands
        return
    if not held.ok:
        log.warning("demo data: the demo preorder was not held: %s", held.shortfalls)
