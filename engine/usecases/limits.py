"""Per-customer limits (SetCustomerLimits): at most `max_units` of a sku per customer, held
and bought within a window, e.g. 2 a customer of a launch sku over 24 hours.

A Reserve that names a customer_id counts its units of each limited sku in the customer's
ledger of that sku (engine/store/lua/budget.lua) before it holds: all of the customer's
ledgers live in the customer's slot, so one script call counts every limited line, and
refuses the hold when one would pass its limit, whatever the location (one Redis or a
cluster alike). A hold that is not made takes its count back; a released one too; an
expired one stops counting at its expiry (entries carry it). A Commit first moves the
count's end to the commit's time + the window, then commits: bought units count that long.

What holds: a customer never has more than max_units of a sku held and bought within the
window, across every location, however many Reserves race: the count comes first and is
atomic. The other way round, a hold counted but not made (the server died between the two
steps, or a Reserve raced another one's count that then fell short) may refuse the
customer for the hold's time to live at most, never let them past their limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import timedelta

from engine.domain import auth
from engine.domain.errors import FailedPrecondition, InvalidArgument
from engine.domain.model import Line, check_id, check_qty
from engine.domain.rules import CustomerLimit
from engine.store.ledgers import Count, bought_ledger
from engine.store.storage import Storage
from engine.usecases.channels import ChannelRules

UNCAPPED = 2**53  # a count that must be kept (units bought) is never refused
MAX_WINDOW_SECONDS = 366 * 24 * 3600


def check_limits(
    limits: Sequence[tuple[str, CustomerLimit | None]],
) -> dict[str, CustomerLimit | None]:
    """(sku, limit or None to remove) -> checked, each sku once."""
    out: dict[str, CustomerLimit | None] = {}
    for i, (sku, limit) in enumerate(limits):
        check_id(sku, f"limits[{i}].sku")
        if sku in out:
            raise InvalidArgument(f"limits[{i}].sku", f"{sku} is given twice")
        if limit is not None:
            check_qty(limit.max_units, f"limits[{i}].max_units")
            if not 1_000 <= limit.window_ms <= MAX_WINDOW_SECONDS * 1000:
                raise InvalidArgument(
                    f"limits[{i}].window_seconds",
                    f"must be from 1 to {MAX_WINDOW_SECONDS} (a year)",
                )
        out[sku] = limit
    return out


class CustomerLimits:
    def __init__(self, storage: Storage, channels: ChannelRules) -> None:
        self.storage = storage
        self.channels = channels

    async def count(
        self, customer: str, rid: str, lines: Sequence[Line], now: int, until: int
    ) -> list[Count]:
        """Counts a hold's limited units in the customer's ledgers until `until` (its
        expiry): the counts made, to take back should the hold not be made.
        FailedPrecondition when one would pass its limit (then none is counted)."""
        limited = await self.channels.limited(ln.sku for ln in lines)
        if not limited:
            return []
        if not customer:
            if auth.current().role is auth.Role.STOREFRONT:
                sku = min(limited)
                raise InvalidArgument(
                    "customer_id", f"{sku} is limited per customer: name the customer"
                )
            return []
        units = _units(lines)
        skus = sorted(limited)
        counts = [
            Count(bought_ledger(customer, sku), units[sku], until, limited[sku].max_units)
            for sku in skus
        ]
        over = await self.storage.budget(rid, now, counts)
        if over is not None:
            i, had = over
            sku, limit = skus[i], limited[skus[i]]
            raise FailedPrecondition(
                f"customer_id: customer {customer} may hold and buy at most "
                f"{limit.max_units} of {sku} within {timedelta(milliseconds=limit.window_ms)}; "
                f"they have {had}, and this reservation holds {units[sku]}"
            )
        return counts

    async def bought(self, customer: str, rid: str, lines: Sequence[Line], now: int) -> bool:
        """Before a commit: the reservation's limited units count until now + their window.
        True when it counted some (to take back should the commit not happen)."""
        if not customer:
            return False
        limited = await self.channels.limited(ln.sku for ln in lines)
        if not limited:
            return False
        units = _units(lines)
        counts = [
            Count(bought_ledger(customer, sku), units[sku], now + limit.window_ms, UNCAPPED)
            for sku, limit in sorted(limited.items())
        ]
        await self.storage.budget(rid, now, counts)
        return True

    async def extended(
        self, customer: str, rid: str, lines: Sequence[Line], now: int, until: int
    ) -> None:
        """After an Extend: the held units count until the new expiry."""
        if customer:
            limited = await self.channels.limited(ln.sku for ln in lines)
            units = _units(lines)
            counts = [Count(bought_ledger(customer, s), units[s], until, UNCAPPED) for s in limited]
            if counts:
                await self.storage.budget(rid, now, sorted(counts, key=lambda c: c.key))

    async def uncount(self, customer: str, rid: str, skus: Iterable[str]) -> None:
        """The reservation's units of these skus no longer count for the customer."""
        if customer:
            keys = sorted({bought_ledger(customer, sku) for sku in skus})
            await self.storage.unbudget(rid, keys)


def _units(lines: Iterable[Line]) -> Counter[str]:
    units: Counter[str] = Counter()
    for line in lines:
        units[line.sku] += line.qty
    return units
