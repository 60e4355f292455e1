"""What every reservation call shares: its directory entry (and who may see it), its state
read from its parts, the steps that commit, release or pin its parts at each location, and
the rules a hold is made under (a channel's, pick capacity). engine/usecases/reservations.py
is the whole story (engine/usecases/moves.py for MoveLine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

from engine.domain import auth
from engine.domain.clock import Clock
from engine.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from engine.domain.model import (
    Line,
    Reservation,
    ReservationState,
    by_location,
    check_id,
    check_ttl,
    ttl_ms,
)
from engine.metrics import Metrics
from engine.store.codecs import ChannelHold, DirEntry, PartState, PickCapacity, encode_part_lines
from engine.store.replies import (
    MOVING,
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
_MOVED_RETRIES = 3  # a call that a MoveLine overtook reads the reservation again, this often
T = TypeVar("T")
Holds = Mapping[str, ChannelHold]  # location -> a channel's hold there, with its rule


class LinesMoved(Exception):
    """A MoveLine changed the reservation's lines after this call read them: it starts
    again from the directory (never seen above the use cases)."""


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

    async def _entry(self, rid: str, move_id: str = "") -> DirEntry:
        check_id(rid, "reservation_id")
        entry = await self.storage.directory(rid, move_id)
        if entry is None or not auth.current().owns(entry.owner):
            raise NotFound(f"reservation {rid} not found")
        return entry

    async def _settled_entry(self, rid: str, move_id: str = "") -> DirEntry:
        """The entry once no MoveLine is under way: a move takes a few round trips; one
        whose caller died is finished by recovery within the saga timeout (else UNAVAILABLE:
        retry)."""
        entry = await self._entry(rid, move_id)
        deadline = time.monotonic() + self.timing.saga_timeout_ms / 1000
        while entry.moving is not None:
            if time.monotonic() >= deadline:
                raise Unavailable(f"reservation {rid} is being moved; retry")
            await asyncio.sleep(0.01)
            entry = await self._entry(rid, move_id)
        return entry

    async def _unmoved(self, rid: str, act: Callable[[DirEntry], Awaitable[T]]) -> T:
        """`act` on the reservation as no MoveLine is changing it: after any move under way,
        and again on the moved lines if a move overtook it (LinesMoved)."""
        for _ in range(_MOVED_RETRIES):
            try:
                return await act(await self._settled_entry(rid))
            except LinesMoved:
                continue
        raise Unavailable(f"reservation {rid} keeps being moved; retry")

    async def get(self, rid: str) -> Reservation:
        """While a MoveLine is under way: its lines as before the move, its state read from
        its parts there and at the destination (the units are held at one or both)."""
        entry = await self._entry(rid)
        at = set(by_location(entry.lines))
        if entry.moving is not None:
            at.add(entry.moving.move.to)
        parts = await self.storage.parts(rid, sorted(at))
        states = {p.state for p in parts}
        if entry.saga in (COMMITTING, COMMITTED):
            state = ReservationState.COMMITTED
        elif entry.saga in (ABORTED, RELEASING):
            state = ReservationState.RELEASED
        else:
            state = overall_state(states)
        future = tuple(f for p in parts for f in p.future)
        return Reservation(rid, entry.shown, state, expiry_of(parts), future)

    async def _channel_holds(self, lines: Iterable[Line], channel: str) -> Holds:
        """Each location's rule for the channel, as its hold script takes it."""
        if not channel:
            return {}
        at = {ln.location for ln in lines}
        rules = await self.channels.at((self.locations.by_id[loc] for loc in at), channel)
        return {loc: ChannelHold.of(channel, rule) for loc, rule in rules.items()}

    def _ttl_ms(self, ttl_seconds: float, who: auth.Principal) -> int:
        cart = who.role is auth.Role.STOREFRONT
        longest = self.caps.max_ttl_ms if cart else None
        if not ttl_seconds:
            return min(self.timing.default_ttl_ms, longest or self.timing.default_ttl_ms)
        check_ttl(ttl_seconds, "ttl_seconds")
        if longest is not None and ttl_seconds * 1000 > longest:
            raise InvalidArgument(
                "ttl_seconds", f"a storefront may hold for at most {longest // 1000} seconds"
            )
        return ttl_ms(ttl_seconds)

    def today(self) -> str:
        """The day pick capacity is counted in (UTC), as YYYYMMDD."""
        return self._date().strftime("%Y%m%d")

    def _date(self) -> date:
        return datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC).date()

    def _capacities(self, limits: Mapping[str, int]) -> dict[str, PickCapacity]:
        """Pick capacity counted by day; the two days before today are kept."""
        if not limits:
            return {}
        today = self._date()
        day, keep_from = (d.strftime("%Y%m%d") for d in (today, today - timedelta(days=2)))
        return {loc: PickCapacity(limit, day, keep_from) for loc, limit in limits.items()}

    async def _commit_parts(
        self, rid: str, groups: dict[str, list[Line]], force: bool, owner: str, read: bool = False
    ) -> None:
        """read: the commit was decided on no directory step (one location), so each part
        must still hold the lines read (else LinesMoved)."""
        now = self.clock.now_ms()
        answers = await asyncio.gather(
            *(
                self.storage.commit_part(
                    rid, loc, [ln.sku for ln in part], now, force, owner, _lines(part, read)
                )
                for loc, part in groups.items()
            )
        )
        if any(answer.reply is Reply.MOVED for answer in answers):
            raise LinesMoved
        for answer in answers:
            if answer.reply is Reply.STATE:
                raise FailedPrecondition(f"reservation {rid} is {answer.state}, not HELD")
            if answer.reply is Reply.MISSING:
                raise NotFound(f"reservation {rid} not found")
            if answer.reply is Reply.PROMISED:
                raise FailedPrecondition(
                    f"reservation {rid}: units of {answer.sku} wait for supply (or their promise "
                    "broke); commit once they are held on hand (GetReservation says)"
                )
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
        read: bool = False,
    ) -> list[PartReply]:
        """owner: whose held units the parts stop counting (see Storage.budget); fp: only
        parts of these lines (a fingerprint) are let go; read: as in _commit_parts."""
        skus = {loc: [ln.sku for ln in groups[loc]] for loc in locations}
        answers = await asyncio.gather(
            *(
                self.storage.release_part(
                    rid, loc, skus[loc], mode, owner, fp, _lines(groups[loc], read)
                )
                for loc in locations
            )
        )
        if any(answer.reply is Reply.MOVED for answer in answers):
            raise LinesMoved
        return list(answers)

    async def _pin(self, rid: str, groups: dict[str, list[Line]]) -> list[str]:
        """Keeps every part that is still HELD so past the commit; answers which were."""
        now = self.clock.now_ms()
        answers = await asyncio.gather(
            *(self.storage.extend_part(rid, loc, now, now + _COMMIT_PIN_MS, True) for loc in groups)
        )
        return [loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.HELD]


def saga_word(saga: str) -> str:
    if saga.startswith(PENDING):
        return "being placed"
    if saga.startswith(MOVING):
        return "being moved"
    return saga.replace("ABORTED", "RELEASED")


def expiry_of(parts: Sequence[PartState]) -> int:
    """A reservation's expiry: its HELD parts' earliest (they share it, but for a moment in
    a race), else its parts' earliest. (While a move is under way, the destination's part may
    be one an earlier move left RELEASED: it says nothing of the reservation.)"""
    held = [p.expires_at for p in parts if p.state == ReservationState.HELD]
    return min(held or [p.expires_at for p in parts], default=0)


def _lines(lines: Sequence[Line], read: bool) -> str:
    return encode_part_lines(lines) if read else ""


def overall_state(states: set[str | None]) -> ReservationState:
    for candidate in ("COMMITTED", "HELD", "EXPIRED", "RELEASED"):
        if candidate in states:
            return ReservationState(candidate)
    raise NotFound("reservation has no parts left")
