"""Ledgers of units counted against a cap (budget.lua): a storefront principal's units held
at once, and a customer's units of a limited sku held and bought within its window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.store.base import Base
from engine.store.keys import Keys
from engine.store.scripts import decoded


def held_ledger(principal: str) -> str:
    """The ledger of a storefront principal's units held at once."""
    return Keys.held(principal)


def bought_ledger(customer: str, sku: str) -> str:
    """The ledger of a customer's units of a limited sku, held and bought."""
    return Keys.bought(customer, sku)


@dataclass(frozen=True, slots=True)
class Count:
    """A hold's count in one ledger (held_ledger, bought_ledger): its units count
    there until `until` (ms), within `cap`."""

    key: str
    units: int
    until: int
    cap: int


class Ledgers(Base):
    async def budget(
        self, reservation_id: str, now: int, counts: Sequence[Count]
    ) -> tuple[int, int] | None:
        """Counts a hold in every ledger of `counts` (one slot), all or none: None when it
        fits (or was counted before: then it only takes the new `until`), else the index
        of the count that does not fit, and the units its ledger counts already."""
        args: list[object] = [now, reservation_id, len(counts)]
        for c in counts:
            args += [c.units, c.until, c.cap]
        answer = decoded(await self.call("budget", [c.key for c in counts], args))
        return None if answer[0] == "OK" else (int(answer[1]) - 1, int(answer[2]))

    async def unbudget(self, reservation_id: str, keys: Sequence[str]) -> None:
        """The hold no longer counts in these ledgers."""
        await self.pipeline(lambda p: [p.hdel(key, reservation_id) for key in keys])
