"""Reservations: holds at one or several locations, and their commit, release and extend.

A reservation at one location is one Lua script: the directory entry and the hold are
written together (one round trip). On a Redis Cluster the directory lives in the slot of
the reservation id, apart from any location's: there the directory entry and the hold are
sent together, each to its own node (one round trip; no saga). Each attempt counts
itself into the entry, and one whose hold failed counts itself out, so the entry stays
exactly while some attempt may have held (place.lua). An id used with other lines is
refused only by the entry: a hold sent beside it has then taken stock, and is let go
(forgotten) before the call answers ALREADY_EXISTS. Others may see those units held for
that moment, as they see a saga's part held before a shortfall elsewhere rolls it back.
A reservation across locations is a saga of per-location
atomic steps under a durable intent: the directory entry, with saga field PENDING:<owner>,
and an entry in the sagas index written before any step. The owner holds every part; if a
part falls short it releases the others and forgets the reservation; if it dies midway, the
sweeper finds the saga past its timeout and rolls it back (tombstoning every part, so a late
step cannot land). A cross-location commit first pins every part (it can no longer expire),
then decides COMMITTING in the directory by compare-and-set, then commits each part; a
release decides RELEASING the same way. Of a commit and a release racing, one decision wins
and the loser touches no part; recovery finishes a decided step after a crash.

The directory's saga field: '' (settled: the parts are the truth), PENDING:<owner>, ABORTED,
COMMITTING -> COMMITTED, RELEASING -> RELEASED, and MOVING:<token> while a MoveLine moves a
line (back to '' after it). Each part has HELD | COMMITTED | RELEASED | EXPIRED; the
reservation's state is theirs, or the decision once one was made.

A line of a bundle (engine/domain/bundles.py) is held as its components, merged with the
other lines at its location, in the same hold script call: the parts and the directory's
lines are the components held; the directory keeps the lines as sent beside them (the
fingerprint and every answer are theirs), so Commit, Release and expiry act on what was
held whatever the bundle has become since.

Here: Reserve (one location) and the calls; the saga steps and recovery are
engine/usecases/sagas.py, MoveLine engine/usecases/moves.py, what all share
engine/usecases/parts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from engine.domain import auth
from engine.domain.bundles import asked_shortfalls, held_lines
from engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
)
from engine.domain.model import (
    HoldResult,
    Line,
    Reservation,
    ReservationState,
    by_location,
    canonical_lines,
    check_id,
    check_ttl,
    fingerprint,
)
from engine.domain.supply import check_promises, waiting_until
from engine.store.codecs import DirEntry, PickCapacity, encode_dir_lines, future_lines
from engine.store.ledgers import Count, held_ledger
from engine.store.replies import (
    Claim,
    HoldReply,
    ReleaseMode,
    Reply,
)
from engine.usecases.moves import Moves
from engine.usecases.parts import (
    ABORTED,
    COMMITTED,
    COMMITTING,
    RELEASED,
    RELEASING,
    Holds,
    LinesMoved,
    saga_word,
)
from engine.usecases.sagas import shortfalls_of


class Reservations(Moves):
    """Each call acts for the principal of the call being served (engine.domain.auth.current()):
    a reservation records who made it, and only that principal (or one that sees every
    reservation) may see or settle it; another gets NOT_FOUND, so ids cannot be probed."""

    # -- Reserve ----------------------------------------------------------------------

    async def reserve(
        self,
        reservation_id: str,
        lines: Sequence[Line],
        ttl_seconds: float = 0.0,
        capacity: Mapping[str, int] | None = None,
        channel: str = "",
        customer: str = "",
    ) -> HoldResult:
        """capacity: location -> its daily pick capacity, for the locations where this hold
        takes one order of it (a ship-from-store plan); a location with none left is FULL.
        channel: the sales channel holding (engine/usecases/channels.py), held to its rules
        at each location; '' for none (no rule applies). The first hold of an id decides
        its channel: a retry is answered as that hold was. customer: the shopper, held to
        per-customer limits (engine/usecases/limits.py)."""
        who = auth.current()
        if channel:
            check_id(channel, "channel")
        if customer:
            check_id(customer, "customer_id")
        for i, line in enumerate(lines):
            check_id(line.location, f"lines[{i}].location_id")
        await self.locations.require([ln.location for ln in lines], "lines[].location_id")
        check_id(reservation_id, "reservation_id")
        canon = canonical_lines(lines)
        who.require_locations((ln.location for ln in canon), "lines[].location_id")
        table = await self.channels.table()
        held = held_lines(canon, table)
        hold_ms = self._ttl_ms(ttl_seconds, who)
        now = self.clock.now_ms()
        latest = check_promises(lines, now, table, channel)
        until = waiting_until(lines, now, hold_ms)  # the longest the hold may last (hold.lua)
        counted = await self._count_units(who, reservation_id, canon, now, until)
        try:
            try:
                counted += await self.customers.count(customer, reservation_id, canon, now, until)
            except FailedPrecondition:
                self.metrics.holds.labels("limited").inc()
                raise
            holds = await self._channel_holds(held, channel)
            made_by = who.making_for(customer)
            asked = canon if held is not canon else ()
            result = await self._reserve(
                reservation_id, held, hold_ms, capacity or {}, holds, made_by, asked
            )
        except BaseException:
            await self._uncount(reservation_id, counted)
            raise
        if result.ok and latest:  # answered with what waits for supply
            result = HoldResult(await self.get(reservation_id))
        if not result.ok:
            await self._uncount(reservation_id, counted)
            if result.shortfalls and held is not canon:
                short = asked_shortfalls(canon, result.shortfalls, table)
                result = HoldResult(None, short, result.full)
        self.metrics.holds.labels(_hold_outcome(result)).inc()
        return result

    async def _uncount(self, rid: str, counted: Sequence[Count]) -> None:
        """A hold not made takes back what it counted against caps and limits."""
        if counted:
            await self.storage.unbudget(rid, [c.key for c in counted])

    async def _reserve(
        self,
        rid: str,
        canon: tuple[Line, ...],
        ttl_ms: int,
        capacity: Mapping[str, int],
        holds: Holds,
        owner: str,
        asked: tuple[Line, ...] = (),
    ) -> HoldResult:
        """canon: the lines held; asked: the lines as sent, when bundles made them other
        (the fingerprint and the answer are theirs; the directory keeps both)."""
        groups = by_location(canon)
        caps = self._capacities(capacity)
        if len(groups) == 1 and not self.storage.cluster:
            return await self._reserve_one(rid, canon, ttl_ms, caps, holds, owner, asked)
        if len(groups) == 1:
            placed = await self._reserve_placed(rid, canon, ttl_ms, caps, holds, owner, asked)
            if placed is not None:
                return placed
        return await self._reserve_saga(rid, canon, groups, ttl_ms, caps, holds, owner, asked)

    async def _count_units(
        self, who: auth.Principal, rid: str, lines: Sequence[Line], now: int, until: int
    ) -> list[Count]:
        """A storefront's hold counts against its units held at once: the count made, to
        take back should the hold not be made."""
        if who.role is not auth.Role.STOREFRONT:
            return []
        units, cap = sum(ln.qty for ln in lines), self.caps.max_units
        count = Count(held_ledger(who.name), units, until, cap)
        over = await self.storage.budget(rid, now, [count])
        if over is not None:
            raise ResourceExhausted(
                f"principal {who.name} holds {over[1]} units; {units} more would pass its {cap}"
            )
        return [count]

    async def _reserve_one(
        self,
        rid: str,
        lines: tuple[Line, ...],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        holds: Holds,
        owner: str,
        asked: tuple[Line, ...] = (),
    ) -> HoldResult:
        now = self.clock.now_ms()
        fp, location = fingerprint(asked or lines, owner), lines[0].location
        call = self.storage.hold_call(
            rid,
            fp,
            location,
            lines,
            now,
            now + ttl_ms,
            encode_dir_lines(lines, asked),
            caps.get(location),
            owner,
            holds.get(location),
        )
        (answer,) = await self.storage.hold([call])
        return await self._hold_answer(rid, asked or lines, location, answer)

    async def _reserve_placed(
        self,
        rid: str,
        lines: tuple[Line, ...],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        holds: Holds,
        owner: str,
        asked: tuple[Line, ...] = (),
    ) -> HoldResult | None:
        """On a cluster: the directory entry at the id's node and the hold at the
        location's, sent together (one round trip, no saga). None: the id is a saga's;
        take its way."""
        now = self.clock.now_ms()
        fp, location = fingerprint(asked or lines, owner), lines[0].location
        ttl = waiting_until(lines, now, ttl_ms) - now + self.storage.retention_ms  # it may wait
        call = self.storage.hold_call(
            rid, fp, location, lines, now, now + ttl_ms, None, caps.get(location), "",
            holds.get(location),
        )  # fmt: skip
        placed, answer = await asyncio.gather(
            self.storage.place(rid, fp, encode_dir_lines(lines, asked), ttl, owner),
            self.storage.hold([call]),
            return_exceptions=True,
        )
        held = not isinstance(answer, BaseException) and answer[0].reply is Reply.HELD
        if isinstance(placed, BaseException) or placed.reply is Claim.CONFLICT:
            # The id is another reservation's, or unknown to be this one's: what this
            # attempt held is let go at once (it was never answered).
            if held:
                groups = by_location(lines)
                await self._release_parts(rid, groups, list(groups), ReleaseMode.FORGET, fp=fp)
            if isinstance(placed, BaseException):
                raise placed
            raise AlreadyExists(f"reservation {rid} exists with other lines")
        if placed.reply is Claim.MOVED:
            # The reservation's lines were moved: a part this attempt made is not its.
            if held:
                groups = by_location(lines)
                await self._release_parts(rid, groups, list(groups), ReleaseMode.FORGET, fp=fp)
            if isinstance(answer, BaseException):
                raise answer
            return HoldResult(await self.get(rid))
        if isinstance(answer, BaseException):
            raise answer  # the entry stays: whether the hold landed is unknown
        if placed.reply is Claim.SAGA:
            return None  # a part held here has the saga's lines: the saga's way finds it
        if answer[0].reply not in (Reply.HELD, Reply.EXISTS):
            await self.storage.unplace(rid, fp)  # this attempt held nothing
        return await self._hold_answer(rid, asked or lines, location, answer[0])

    async def _hold_answer(
        self, rid: str, lines: tuple[Line, ...], location: str, answer: HoldReply
    ) -> HoldResult:
        """lines: as the reservation shows them (as sent)."""
        if answer.reply is Reply.CONFLICT:
            raise AlreadyExists(f"reservation {rid} exists with other lines")
        if answer.reply is Reply.SHORT:
            return HoldResult(None, shortfalls_of(location, answer))
        if answer.reply is Reply.FULL:
            return HoldResult(None, full=(location,))
        if answer.reply is Reply.MOVED:  # the id's lines were moved: as it is now
            return HoldResult(await self.get(rid))
        assert answer.state is not None  # HELD or EXISTS
        if answer.reply is Reply.EXISTS:
            # A retry: answered as the reservation is now (a MoveLine may have moved its
            # lines since), or, once its entry is forgotten, as its part here is.
            with contextlib.suppress(NotFound):
                return HoldResult(await self.get(rid))
        return HoldResult(Reservation(rid, lines, answer.state, answer.expires_at))

    # -- Commit, Release, Extend --------------------------------------------------------
    #
    # Across locations, the directory's saga field decides between racing calls: a commit
    # moves it '' -> COMMITTING -> COMMITTED, a release '' -> RELEASING -> RELEASED, each by
    # compare-and-set, so one of them wins and the loser touches no part. The sagas index
    # entry goes first, so a crash midway is finished by recovery.

    # A call that meets a MoveLine under way waits for it, and one that a move overtook reads
    # the moved lines and acts again (LinesMoved; engine/usecases/moves.py).

    async def commit(self, rid: str) -> Reservation:
        """A customer's limited units count as bought (for their window) before the commit,
        so that no crash between the two lets them count for less."""
        return await self._unmoved(rid, lambda entry: self._commit(rid, entry))

    async def _commit(self, rid: str, entry: DirEntry) -> Reservation:
        groups = by_location(entry.lines)
        if entry.saga not in ("", COMMITTING, COMMITTED):
            raise FailedPrecondition(f"reservation {rid} is {saga_word(entry.saga)}, not HELD")
        customer = entry.customer
        bought = await self.customers.bought(customer, rid, entry.shown, self.clock.now_ms())
        try:
            if len(groups) == 1 and not entry.saga:
                await self._commit_parts(rid, groups, False, entry.owner, read=True)
            else:
                await self._commit_saga(rid, entry, groups)
        except FailedPrecondition:  # not bought: released or expired
            if bought:
                await self.customers.uncount(customer, rid, (ln.sku for ln in entry.shown))
            raise
        return Reservation(rid, entry.shown, ReservationState.COMMITTED, 0)

    async def release(self, rid: str) -> Reservation:
        return await self._unmoved(rid, lambda entry: self._release(rid, entry))

    async def _release(self, rid: str, entry: DirEntry) -> Reservation:
        groups = by_location(entry.lines)
        if len(groups) == 1 and not entry.saga:
            answers = await self._release_parts(
                rid, groups, list(groups), ReleaseMode.RELEASE, entry.owner, read=True
            )
        elif entry.saga in ("", RELEASING, RELEASED):
            answers = await self._release_saga(
                rid, groups, entry.owner, bool(entry.saga), entry.generation
            )
        elif entry.saga == ABORTED:
            return await self.get(rid)
        else:
            raise FailedPrecondition(f"reservation {rid} is {saga_word(entry.saga)}")
        if any(a.state is ReservationState.COMMITTED for a in answers):
            raise FailedPrecondition(f"reservation {rid} is COMMITTED; it cannot be released")
        if any(a.changed for a in answers):
            self.metrics.releases.inc()
        await self.customers.uncount(entry.customer, rid, (ln.sku for ln in entry.shown))
        expired = all(a.state is ReservationState.EXPIRED for a in answers)
        state = ReservationState.EXPIRED if expired else ReservationState.RELEASED
        return Reservation(rid, entry.shown, state, 0)

    async def extend(self, rid: str, ttl_seconds: float) -> Reservation:
        who = auth.current()
        if not ttl_seconds:
            check_ttl(ttl_seconds, "ttl_seconds")
        hold_ms = self._ttl_ms(ttl_seconds, who)
        return await self._unmoved(rid, lambda entry: self._extend(rid, entry, hold_ms, who))

    async def _extend(
        self, rid: str, entry: DirEntry, hold_ms: int, who: auth.Principal
    ) -> Reservation:
        if entry.saga:
            raise FailedPrecondition(f"reservation {rid} is {saga_word(entry.saga)}")
        now = self.clock.now_ms()
        expires_at = now + hold_ms
        groups = by_location(entry.lines)
        answers = await asyncio.gather(
            *(self.storage.extend_part(rid, loc, now, expires_at, False) for loc in groups)
        )
        after = await self.storage.directory(rid)
        if after is not None and (after.moving or after.generation != entry.generation):
            raise LinesMoved  # a move came between: its new part has the old expiry
        for answer in answers:
            if answer.reply is not Reply.HELD:
                state = answer.state or "missing"
                raise FailedPrecondition(f"reservation {rid} is {state}, not HELD")
        if who.role is auth.Role.STOREFRONT:  # its units count until the new expiry
            units = sum(ln.qty for ln in entry.shown)
            count = Count(held_ledger(who.name), units, expires_at, self.caps.max_units)
            await self.storage.budget(rid, now, [count])
        await self.customers.extended(entry.customer, rid, entry.shown, now, expires_at)
        # (a part with units waiting for supply keeps its later expiry: extend.lua)
        held_until = min(answer.expires_at for answer in answers)
        future = tuple(
            f for loc, answer in zip(groups, answers, strict=True)
            for f in future_lines(loc, answer.waiting)
        )  # fmt: skip
        return Reservation(rid, entry.shown, ReservationState.HELD, held_until, future)


def _hold_outcome(result: HoldResult) -> str:
    if result.ok:
        return "held"
    return "full" if result.full and not result.shortfalls else "short"
