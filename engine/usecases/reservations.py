"""Reservations: holds at one or several locations, and their commit, release and extend.

A reservation at one location is one Lua script: the directory entry and the hold are
written together (one round trip). On a Redis Cluster the directory lives in the slot of
the reservation id, apart from any location's, so there every Reserve is a saga, even at
one location. A reservation across locations is a saga of per-location
atomic steps under a durable intent: the directory entry, with saga field PENDING:<owner>,
and an entry in the sagas index written before any step. The owner holds every part; if a
part falls short it releases the others and forgets the reservation; if it dies midway, the
sweeper finds the saga past its timeout and rolls it back (tombstoning every part, so a late
step cannot land). A cross-location commit first pins every part (it can no longer expire),
then decides COMMITTING in the directory by compare-and-set, then commits each part; a
release decides RELEASING the same way. Of a commit and a release racing, one decision wins
and the loser touches no part; recovery finishes a decided step after a crash.

The directory's saga field: '' (settled: the parts are the truth), PENDING:<owner>, ABORTED,
COMMITTING -> COMMITTED, RELEASING -> RELEASED. Each part has HELD | COMMITTED | RELEASED |
EXPIRED; the reservation's state is theirs, or the decision once one was made.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from engine.domain import auth
from engine.domain.clock import Clock
from engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from engine.domain.model import (
    HoldResult,
    Line,
    Reservation,
    ReservationState,
    Shortfall,
    by_location,
    canonical_lines,
    check_id,
    check_ttl,
    fingerprint,
    ttl_ms,
)
from engine.metrics import Metrics
from engine.store.codecs import DirEntry, PickCapacity, encode_lines
from engine.store.replies import (
    PENDING,
    Claim,
    HoldReply,
    PartReply,
    ReleaseMode,
    Reply,
    Saga,
)
from engine.store.storage import Storage

COMMITTING, COMMITTED = Saga.COMMITTING, Saga.COMMITTED
RELEASING, RELEASED = Saga.RELEASING, Saga.RELEASED
ABORTED = Saga.ABORTED
_SETTLED_AS = {COMMITTING: COMMITTED, RELEASING: RELEASED}
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


class Reservations:
    """Each call acts for the principal of the call being served (engine.domain.auth.current()):
    a reservation records who made it, and only that principal (or one that sees every
    reservation) may see or settle it; another gets NOT_FOUND, so ids cannot be probed."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        timing: Timing,
        metrics: Metrics,
        caps: CartCaps | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.timing = timing
        self.metrics = metrics
        self.caps = caps or CartCaps()

    # -- Reserve ----------------------------------------------------------------------

    async def reserve(
        self,
        reservation_id: str,
        lines: Sequence[Line],
        ttl_seconds: float = 0.0,
        capacity: Mapping[str, int] | None = None,
    ) -> HoldResult:
        """capacity: location -> its daily pick capacity, for the locations where this hold
        takes one order of it (a ship-from-store plan); a location with none left is FULL."""
        who = auth.current()
        check_id(reservation_id, "reservation_id")
        canon = canonical_lines(lines)
        who.require_locations((ln.location for ln in canon), "lines[].location_id")
        hold_ms = self._ttl_ms(ttl_seconds, who)
        counted = await self._count_units(who, reservation_id, canon, hold_ms)
        try:
            result = await self._reserve(reservation_id, canon, hold_ms, capacity or {}, who.name)
        except BaseException:
            if counted:
                await self.storage.unbudget(who.name, reservation_id)
            raise
        if counted and not result.ok:
            await self.storage.unbudget(who.name, reservation_id)
        self.metrics.holds.labels(_hold_outcome(result)).inc()
        return result

    async def _reserve(
        self,
        rid: str,
        canon: tuple[Line, ...],
        ttl_ms: int,
        capacity: Mapping[str, int],
        owner: str,
    ) -> HoldResult:
        groups = by_location(canon)
        caps = self._capacities(capacity)
        if len(groups) == 1 and not self.storage.cluster:
            return await self._reserve_one(rid, canon, ttl_ms, caps, owner)
        return await self._reserve_saga(rid, canon, groups, ttl_ms, caps, owner)

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

    async def _count_units(
        self, who: auth.Principal, rid: str, lines: Sequence[Line], ttl_ms: int
    ) -> bool:
        """A storefront's hold counts against its units held at once; True when this call
        counted it (and must take it back should the hold not be made)."""
        if who.role is not auth.Role.STOREFRONT:
            return False
        units, now = sum(ln.qty for ln in lines), self.clock.now_ms()
        cap = self.caps.max_units
        held = await self.storage.budget(who.name, rid, units, now, now + ttl_ms, cap)
        if held is not None:
            raise ResourceExhausted(
                f"principal {who.name} holds {held} units; {units} more would pass its {cap}"
            )
        return True

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

    async def _reserve_one(
        self,
        rid: str,
        lines: tuple[Line, ...],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        owner: str,
    ) -> HoldResult:
        now = self.clock.now_ms()
        fp, location = fingerprint(lines, owner), lines[0].location
        call = self.storage.hold_call(
            rid,
            fp,
            location,
            lines,
            now,
            now + ttl_ms,
            encode_lines(lines),
            caps.get(location),
            owner,
        )
        (answer,) = await self.storage.hold([call])
        return self._hold_answer(rid, lines, location, answer)

    def _hold_answer(
        self, rid: str, lines: tuple[Line, ...], location: str, answer: HoldReply
    ) -> HoldResult:
        if answer.reply is Reply.CONFLICT:
            raise AlreadyExists(f"reservation {rid} exists with other lines")
        if answer.reply is Reply.SHORT:
            return HoldResult(None, _shortfalls(location, answer))
        if answer.reply is Reply.FULL:
            return HoldResult(None, full=(location,))
        assert answer.state is not None  # HELD or EXISTS
        return HoldResult(Reservation(rid, lines, answer.state, answer.expires_at))

    async def _reserve_saga(
        self,
        rid: str,
        lines: tuple[Line, ...],
        groups: dict[str, list[Line]],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        owner: str,
    ) -> HoldResult:
        for _ in range(3):
            result = await self._try_saga(rid, lines, groups, ttl_ms, caps, owner)
            if result is not None:
                return result
        raise Unavailable(f"reservation {rid} keeps being placed and rolled back; retry")

    async def _try_saga(
        self,
        rid: str,
        lines: tuple[Line, ...],
        groups: dict[str, list[Line]],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        made_by: str,
    ) -> HoldResult | None:
        """One attempt; None when a concurrent attempt with this id fell short meanwhile."""
        now = self.clock.now_ms()
        fp, owner = fingerprint(lines, made_by), uuid.uuid4().hex
        ttl = ttl_ms + self.storage.retention_ms
        recover_at = now + self.timing.saga_timeout_ms
        claimed = await self.storage.claim(
            rid, fp, encode_lines(lines), owner, ttl, recover_at, made_by
        )
        if claimed.reply is Claim.CONFLICT:
            raise AlreadyExists(f"reservation {rid} exists with other lines")
        if claimed.reply is Claim.SAGA:
            settled = await self._settled(rid, claimed.saga)
            return None if settled is None else HoldResult(settled)
        calls = [
            self.storage.hold_call(rid, fp, loc, part, now, now + ttl_ms, None, caps.get(loc))
            for loc, part in groups.items()
        ]
        answers = await self.storage.hold(calls)
        held = [loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.HELD]
        if len(held) == len(calls):
            if not await self.storage.settle(rid, PENDING + owner, ""):
                await self._release_parts(rid, groups, held, ReleaseMode.TOMBSTONE)
                raise Unavailable(f"reservation {rid} was rolled back by recovery; retry")
            await self.storage.unschedule_saga(rid)
            return HoldResult(Reservation(rid, lines, ReservationState.HELD, now + ttl_ms))
        shortfalls: list[Shortfall] = []
        for loc, answer in zip(groups, answers, strict=True):
            shortfalls += _shortfalls(loc, answer)
        full = tuple(loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.FULL)
        # It never took effect: forget every part held, then the id itself.
        await self._release_parts(rid, groups, held, ReleaseMode.FORGET)
        await self.storage.drop_directory(rid, fp)
        await self.storage.unschedule_saga(rid)
        if not shortfalls and not full:
            raise Unavailable(f"reservation {rid} was rolled back by recovery; retry")
        return HoldResult(None, tuple(shortfalls), full)

    async def _settled(self, rid: str, saga: str) -> Reservation | None:
        """Another call owns this saga: wait for it to settle, then answer as it did.
        None: it fell short and forgot the id, so this call may place it anew."""
        deadline = time.monotonic() + self.timing.saga_timeout_ms / 1000
        while saga.startswith(PENDING) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            entry = await self.storage.directory(rid)
            if entry is None:
                return None
            saga = entry.saga
        if saga.startswith(PENDING):
            raise Unavailable(f"reservation {rid} is still being placed; retry")
        return await self.get(rid)

    async def _release_parts(
        self,
        rid: str,
        groups: dict[str, list[Line]],
        locations: Sequence[str],
        mode: ReleaseMode,
        owner: str = "",
    ) -> list[PartReply]:
        """owner: whose held units the parts stop counting (see Storage.budget)."""
        return list(
            await asyncio.gather(
                *(
                    self.storage.release_part(rid, loc, [ln.sku for ln in groups[loc]], mode, owner)
                    for loc in locations
                )
            )
        )

    # -- Commit, Release, Extend, Get -------------------------------------------------
    #
    # Across locations, the directory's saga field decides between racing calls: a commit
    # moves it '' -> COMMITTING -> COMMITTED, a release '' -> RELEASING -> RELEASED, each by
    # compare-and-set, so one of them wins and the loser touches no part. The sagas index
    # entry goes first, so a crash midway is finished by recovery.

    async def _entry(self, rid: str) -> DirEntry:
        check_id(rid, "reservation_id")
        entry = await self.storage.directory(rid)
        if entry is None or not auth.current().owns(entry.owner):
            raise NotFound(f"reservation {rid} not found")
        return entry

    async def commit(self, rid: str) -> Reservation:
        entry = await self._entry(rid)
        groups = by_location(entry.lines)
        if len(groups) == 1 and not entry.saga:
            await self._commit_parts(rid, groups, False, entry.owner)
        elif entry.saga in ("", COMMITTING, COMMITTED):
            await self._commit_saga(rid, entry, groups)
        else:
            raise FailedPrecondition(f"reservation {rid} is {_saga_word(entry.saga)}, not HELD")
        return Reservation(rid, entry.lines, ReservationState.COMMITTED, 0)

    async def _commit_saga(self, rid: str, entry: DirEntry, groups: dict[str, list[Line]]) -> None:
        saga = entry.saga
        if not saga:
            pinned = await self._pin(rid, groups)
            if len(pinned) < len(groups):
                saga = (await self._entry(rid)).saga
                if saga not in (COMMITTING, COMMITTED):
                    if pinned:  # parts lapsed unevenly (clock skew): let none outlive the rest
                        await self._release_saga(rid, groups, entry.owner)
                    raise FailedPrecondition(f"reservation {rid} is no longer HELD")
            else:
                await self._decide(rid, "", COMMITTING)
                saga = COMMITTING
        if saga == COMMITTING:
            await self._commit_parts(rid, groups, True, entry.owner)
            await self.storage.settle(rid, COMMITTING, COMMITTED)
            await self.storage.unschedule_saga(rid)

    async def _decide(self, rid: str, expected: str, new: Saga) -> None:
        """Moves the saga field by compare-and-set; on losing, says who won (unless the
        winner made the same decision: then this call helps finish it)."""
        await self.storage.schedule_saga(rid, self.clock.now_ms() + self.timing.saga_timeout_ms)
        if await self.storage.settle(rid, expected, new):
            return
        entry = await self._entry(rid)
        if entry.saga not in (new, _SETTLED_AS[new]):
            raise FailedPrecondition(f"reservation {rid} is {_saga_word(entry.saga)}, not HELD")

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

    async def _pin(self, rid: str, groups: dict[str, list[Line]]) -> list[str]:
        """Keeps every part that is still HELD so past the commit; answers which were."""
        now = self.clock.now_ms()
        answers = await asyncio.gather(
            *(self.storage.extend_part(rid, loc, now, now + _COMMIT_PIN_MS, True) for loc in groups)
        )
        return [loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.HELD]

    async def release(self, rid: str) -> Reservation:
        entry = await self._entry(rid)
        groups = by_location(entry.lines)
        if len(groups) == 1 and not entry.saga:
            answers = await self._release_parts(
                rid, groups, list(groups), ReleaseMode.RELEASE, entry.owner
            )
        elif entry.saga in ("", RELEASING, RELEASED):
            answers = await self._release_saga(rid, groups, entry.owner, bool(entry.saga))
        elif entry.saga == ABORTED:
            return await self.get(rid)
        else:
            raise FailedPrecondition(f"reservation {rid} is {_saga_word(entry.saga)}")
        if any(a.state is ReservationState.COMMITTED for a in answers):
            raise FailedPrecondition(f"reservation {rid} is COMMITTED; it cannot be released")
        if any(a.changed for a in answers):
            self.metrics.releases.inc()
        expired = all(a.state is ReservationState.EXPIRED for a in answers)
        state = ReservationState.EXPIRED if expired else ReservationState.RELEASED
        return Reservation(rid, entry.lines, state, 0)

    async def _release_saga(
        self, rid: str, groups: dict[str, list[Line]], owner: str, decided: bool = False
    ) -> list[PartReply]:
        if not decided:
            await self._decide(rid, "", RELEASING)
        answers = await self._release_parts(rid, groups, list(groups), ReleaseMode.RELEASE, owner)
        await self.storage.settle(rid, RELEASING, RELEASED)
        await self.storage.unschedule_saga(rid)
        return answers

    async def extend(self, rid: str, ttl_seconds: float) -> Reservation:
        who = auth.current()
        if not ttl_seconds:
            check_ttl(ttl_seconds, "ttl_seconds")
        hold_ms = self._ttl_ms(ttl_seconds, who)
        entry = await self._entry(rid)
        if entry.saga:
            raise FailedPrecondition(f"reservation {rid} is {_saga_word(entry.saga)}")
        now = self.clock.now_ms()
        expires_at = now + hold_ms
        groups = by_location(entry.lines)
        answers = await asyncio.gather(
            *(self.storage.extend_part(rid, loc, now, expires_at, False) for loc in groups)
        )
        for answer in answers:
            if answer.reply is not Reply.HELD:
                state = answer.state or "missing"
                raise FailedPrecondition(f"reservation {rid} is {state}, not HELD")
        if who.role is auth.Role.STOREFRONT:  # its units count until the new expiry
            units = sum(ln.qty for ln in entry.lines)
            cap = self.caps.max_units
            await self.storage.budget(who.name, rid, units, now, expires_at, cap)
        return Reservation(rid, entry.lines, ReservationState.HELD, expires_at)

    async def get(self, rid: str) -> Reservation:
        entry = await self._entry(rid)
        parts = await self.storage.parts(rid, by_location(entry.lines))
        states = {p.state for p in parts}
        if entry.saga in (COMMITTING, COMMITTED):
            state = ReservationState.COMMITTED
        elif entry.saga in (ABORTED, RELEASING):
            state = ReservationState.RELEASED
        else:
            state = _overall(states)
        expires_at = min((p.expires_at for p in parts), default=0)
        return Reservation(rid, entry.lines, state, expires_at)

    # -- recovery (the sweeper calls this) ---------------------------------------------

    async def recover(self, rid: str) -> str:
        """Finishes or rolls back a saga whose owner did not; returns what it did."""
        entry = await self.storage.directory(rid)
        action = "none"
        if entry is not None:
            groups = by_location(entry.lines)
            if entry.saga.startswith(PENDING) and await self.storage.settle(
                rid, entry.saga, ABORTED
            ):
                await self._release_parts(
                    rid, groups, list(groups), ReleaseMode.TOMBSTONE, entry.owner
                )
                action = "rolled_back"
            elif entry.saga == COMMITTING:
                await self._commit_parts(rid, groups, True, entry.owner)
                await self.storage.settle(rid, COMMITTING, COMMITTED)
                action = "committed"
            elif entry.saga == RELEASING:
                await self._release_parts(
                    rid, groups, list(groups), ReleaseMode.RELEASE, entry.owner
                )
                await self.storage.settle(rid, RELEASING, RELEASED)
                action = "released"
        await self.storage.unschedule_saga(rid)
        if action != "none":
            self.metrics.sagas_recovered.labels(action).inc()
        return action


def _hold_outcome(result: HoldResult) -> str:
    if result.ok:
        return "held"
    return "full" if result.full and not result.shortfalls else "short"


def _saga_word(saga: str) -> str:
    return "being placed" if saga.startswith(PENDING) else saga.replace("ABORTED", "RELEASED")


def _shortfalls(location: str, answer: HoldReply) -> tuple[Shortfall, ...]:
    return tuple(Shortfall(location, *short) for short in answer.short)


def _overall(states: set[str | None]) -> ReservationState:
    for candidate in ("COMMITTED", "HELD", "EXPIRED", "RELEASED"):
        if candidate in states:
            return ReservationState(candidate)
    raise NotFound("reservation has no parts left")
