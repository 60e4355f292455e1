"""What every reservation call shares: its directory entry (and who may see it), its state
read from its parts, and the steps that commit, release or pin its parts at each location.
engine/usecases/reservations.py is the whole story."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from engine.domain import auth
from engine.domain.clock import Clock
from engine.domain.errors import (
    FailedPrecondition,
    NotFound,
)
from engine.domain.model import (
    Line,
    Reservation,
    ReservationState,
    by_location,
    check_id,
)
from engine.metrics import Metrics
from engine.store.codecs import DirEntry
from engine.store.replies import (
    PENDING,
    PartReply,
    ReleaseMode,
    Reply,
    Saga,
)
from engine.store.storage import Storage
from engine.usecases.channels import ChannelRules
from engine.usecases.limits import CustomerLimits
from engine.usecases.locations import LocationRegistry

COMMITTING, COMMITTED = Saga.COMMITTING, Saga.COMMITTED
RELEASING, RELEASED = Saga.RELEASING, Saga.RELEASED
ABORTED = Saga.ABORTED
SETTLED_AS = {COMMITTING: COMMITTED, RELEASING: RELEASED}
_COMMIT_PIN_MS = 120_000


@dataclass(frozen=True, slots=True)
class Timing:
    default_ttl_ms: int
    saga_timeout_ms: int


@dataclass(frozen=True, slots=True)
class CartCaps:
    """What a storefront principal may hold: its longest hold, and its units held at once."""

    max_ttl_ms: int = 1_800_000
    max_units: int = 1000


class ReservationParts:
    """The steps on a reservation's parts that every call and the saga protocol share."""

    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        clock: Clock,
        timing: Timing,
        metrics: Metrics,
        caps: CartCaps | None = None,
    ) -> None:
        self.storage = storage
        self.locations = locations
        self.clock = clock
        self.timing = timing
        self.metrics = metrics
        self.caps = caps or CartCaps()
        self.channels = ChannelRules(storage, locations)
        self.customers = CustomerLimits(storage, self.channels)

    async def _entry(self, rid: str) -> DirEntry:
        check_id(rid, "reservation_id")
        entry = await self.storage.directory(rid)
        if entry is None or not auth.current().owns(entry.owner):
            raise NotFound(f"reservation {rid} not found")
        return entry

    async def get(self, rid: str) -> Reservation:
        entry = await self._entry(rid)
        parts = await self.storage.parts(rid, by_location(entry.lines))
        states = {p.state for p in parts}
        if entry.saga in (COMMITTING, COMMITTED):
            state = ReservationState.COMMITTED
        elif entry.saga in (ABORTED, RELEASING):
            state = ReservationState.RELEASED
        else:
            state = overall_state(states)
        expires_at = min((p.expires_at for p in parts), default=0)
        return Reservation(rid, entry.lines, state, expires_at)

    async def _commit_parts(
        self, rid: str, groups: dict[str, list[Line]], force: bool, owner: str
    ) -> None:
        now = self.clock.now_ms()
        answers = await asyncio.gather(
            *(
                self.storage.commit_part(rid, loc, [ln.sku for ln in part], now, force, owner)
                for loc, part in groups.items()
            )
        )
        for answer in answers:
            if answer.reply is Reply.STATE:
                raise FailedPrecondition(f"reservation {rid} is {answer.state}, not HELD")
            if answer.reply is Reply.MISSING:
                raise NotFound(f"reservation {rid} not found")
        if any(answer.changed for answer in answers):
            self.metrics.commits.inc()

    async def _release_parts(
        self,
        rid: str,
        groups: dict[str, list[Line]],
        locations: Sequence[str],
        mode: ReleaseMode,
        owner: str = "",
        fp: str = "",
    ) -> list[PartReply]:
        """owner: whose held units the parts stop counting (see Storage.budget); fp: only
        parts of these lines (a fingerprint) are let go."""
        skus = {loc: [ln.sku for ln in groups[loc]] for loc in locations}
        return list(
            await asyncio.gather(
                *(
                    self.storage.release_part(rid, loc, skus[loc], mode, owner, fp)
                    for loc in locations
                )
            )
        )

    async def _pin(self, rid: str, groups: dict[str, list[Line]]) -> list[str]:
        """Keeps every part that is still HELD so past the commit; answers which were."""
        now = self.clock.now_ms()
        answers = await asyncio.gather(
            *(self.storage.extend_part(rid, loc, now, now + _COMMIT_PIN_MS, True) for loc in groups)
        )
        return [loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.HELD]


def saga_word(saga: str) -> str:
    return "being placed" if saga.startswith(PENDING) else saga.replace("ABORTED", "RELEASED")


def overall_state(states: set[str | None]) -> ReservationState:
    for candidate in ("COMMITTED", "HELD", "EXPIRED", "RELEASED"):
        if candidate in states:
            return ReservationState(candidate)
    raise NotFound("reservation has no parts left")
