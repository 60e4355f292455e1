"""MoveLine: one held line of a reservation moved to another location (the order is
re-sourced), without its units ever showing as free in between, all or nothing, once per
move id.

A move is a saga of two per-location steps under a durable intent, each step named by the
attempt's token (a fresh uuid) and idempotent:

  1. claim   the directory's saga field goes '' -> MOVING:<token> by compare-and-set, only
             on the lines the call read (their generation, field n, moved on by each move
             made), with the move in field m; the sagas index entry is written first
             (move_claim.lua). Commits, releases, extends and other moves now wait.
  2. in      the destination holds the line (move_in.lua), as a hold would: within its
             stock and the reservation's channel rules there (the channel its parts
             record), with the reservation's expiry; in a new part, or added to the
             reservation's part there (its line of that sku, if any, grows). A new part of
             a ship-from-store plan takes one order of the destination's pick capacity.
  3. out     the source part lets the line go (move_out.lua): its other lines stay, a part
             left with none is RELEASED (its pick capacity given back). This step makes
             the move: it is taken only once the destination holds.
  4. settle  the directory takes the moved lines, n + 1, and keeps the move id with what it
             moved (d:<move id>); the saga field is '' again; the index entry goes.

So at every instant the units are held at the source, the destination, or both: a reader
never sees them free. Destination short: the claim is settled back, nothing changed, and
the answer lists the shortfall (as Reserve's); the source part committed, released or
expired meanwhile: the destination's hold is undone and the call answers
FAILED_PRECONDITION (that call won).

Recovery (the sweeper, once the claim is past the saga timeout) decides at the source:
`cancel` there finds the line out (the move is made: settle it), or makes sure this
attempt's `out` never lands (its token is marked rolled back there); then the destination's
hold is undone, or, if it has not landed, marked so that it never does, and the claim is
settled back. An attempt whose step meets such a mark undoes what it did and tries again
from the directory (its move id is not spent). Every part keeps the tokens that moved a line
out of it (mo) and those rolled back at it (mx), so a late step of any attempt finds its
answer there.

A retried MoveLine with the same move id answers the reservation as it is now; another move
under that id is ALREADY_EXISTS. A retried Reserve of the reservation (its lines as first
reserved: the id's fingerprint does not change) answers it as it is now too, moved lines and
all.
"""

from __future__ import annotations

import dataclasses
import uuid

from engine.domain import auth
from engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from engine.domain.model import (
    HoldResult,
    Line,
    Reservation,
    ReservationState,
    by_location,
    check_id,
)
from engine.domain.moves import Move, moved_lines
from engine.store.codecs import DirEntry, MoveRecord, PartState
from engine.store.moves import MoveIn, Source
from engine.store.replies import HoldReply, MoveClaim, Reply
from engine.usecases.parts import overall_state, saga_word
from engine.usecases.sagas import Sagas, shortfalls_of

_ATTEMPTS = 3  # a move rolled back under its caller (recovery) is tried again, this often


class Moves(Sagas):
    """MoveLine, and the recovery of a move whose caller died."""

    async def move_line(self, rid: str, move_id: str, asked: Move) -> HoldResult:
        """The reservation after the move (or as it is now, for a retry of a move made), or
        the destination's shortfall (nothing moved)."""
        who = auth.current()
        check_id(rid, "reservation_id")
        check_id(move_id, "move_id")
        asked.check()
        await self.locations.require([asked.to], "to_location_id")
        who.require_locations([asked.location], "location_id")
        who.require_locations([asked.to], "to_location_id")
        for _ in range(_ATTEMPTS):
            result = await self._try_move(rid, move_id, asked)
            if result is not None:
                return result
        raise Unavailable(f"reservation {rid}: move {move_id} keeps being overtaken; retry")

    async def _try_move(self, rid: str, move_id: str, asked: Move) -> HoldResult | None:
        """One attempt; None when another call changed the reservation first: read again."""
        entry = await self._settled_entry(rid, move_id)
        if entry.done is not None:
            if not asked.same_as(entry.done):
                raise AlreadyExists(f"move {move_id} of reservation {rid} moved another line")
            self.metrics.moves.labels("retried").inc()
            return HoldResult(await self.get(rid))
        if entry.asked:  # its parts hold a kit's components together: not one line each
            raise InvalidArgument(
                "reservation_id",
                f"reservation {rid} holds bundles: MoveLine does not move a bundle's lines "
                "(release it and reserve at the other location)",
            )
        if entry.saga:
            raise FailedPrecondition(f"reservation {rid} is {saga_word(entry.saga)}, not HELD")
        move = asked.resolved(entry.lines)
        groups = by_location(entry.lines)
        source = await self.storage.move_source(rid, groups, move.location)
        self._require_held(rid, source.parts)
        if any(p.future for p in source.parts):  # a part never gains future lines after
            raise FailedPrecondition(
                f"reservation {rid} has units waiting for supply: MoveLine moves only lines "
                "held on hand (release it and reserve at the other location)"
            )
        into = await self._move_in(entry, move, source)
        token = uuid.uuid4().hex
        recover_at = self.clock.now_ms() + self.timing.saga_timeout_ms
        claimed = await self.storage.claim_move(
            rid, entry.generation, move_id, token, move, recover_at
        )
        if claimed.reply is MoveClaim.MISSING:
            raise NotFound(f"reservation {rid} not found")
        if claimed.reply is not MoveClaim.NEW:
            return None  # made meanwhile (DONE), or another call's step: read again
        # Read again under the claim: an Extend that read the reservation before it has
        # moved the expiry by now (or reads it again after: Reservations._extend).
        source = await self.storage.move_source(rid, groups, move.location)
        into = dataclasses.replace(into, expires_at=_expiry(source.parts))
        return await self._moved(rid, entry, move, token, into, source)

    async def _moved(
        self, rid: str, entry: DirEntry, move: Move, token: str, into: MoveIn, source: Source
    ) -> HoldResult | None:
        """Steps 2-4, under this call's claim."""
        now = self.clock.now_ms()
        if (why := _not_held(source.parts, now)) is not None:
            held = HoldReply(Reply.STATE, why)
        else:
            held = await self.storage.move_in(rid, token, move, now, into)
        if held.reply is not Reply.HELD:
            await self._settle_move(rid, token, None)
            return self._not_moved_in(rid, move, held)
        out = await self.storage.move_out(rid, token, move, self.clock.now_ms())
        if out.reply is Reply.DONE:
            lines = moved_lines(entry.lines, move)
            await self._settle_move(rid, token, lines)
            self.metrics.moves.labels("moved").inc()
            return HoldResult(Reservation(rid, lines, ReservationState.HELD, held.expires_at))
        await self.storage.undo_move_in(rid, token, move, self.clock.now_ms(), into)
        await self._settle_move(rid, token, None)
        if out.reply is Reply.CANCELLED:
            return None  # recovery rolled this attempt back: try again
        raise _refused(rid, move, out.state)

    def _not_moved_in(self, rid: str, move: Move, held: HoldReply) -> HoldResult | None:
        if held.reply is Reply.SHORT:
            self.metrics.moves.labels("short").inc()
            return HoldResult(None, shortfalls_of(move.to, held))
        if held.reply is Reply.FULL:
            raise FailedPrecondition(f"to_location_id: {move.to} has no pick capacity left today")
        if held.reply is Reply.CANCELLED:
            return None  # recovery rolled this attempt back: try again
        raise _refused(rid, move, held.state)

    def _require_held(self, rid: str, parts: list[PartState]) -> None:
        why = _not_held(parts, self.clock.now_ms())
        if why is not None:
            raise FailedPrecondition(f"reservation {rid} is {why.value}, not HELD")

    async def _move_in(self, entry: DirEntry, move: Move, source: Source) -> MoveIn:
        """How the destination is to hold the line: the reservation's channel with its rule
        there, and, for a new part of a ship-from-store plan (its source part took pick
        capacity), one order of the destination's capacity if it has a limit."""
        holds = await self._channel_holds([Line(move.to, move.sku, move.qty)], source.channel)
        join = any(ln.location == move.to for ln in entry.lines)
        limit = self.locations.by_id[move.to].ship_capacity
        capacity = None
        if source.capacity_day and not join and limit is not None:
            capacity = self._capacities({move.to: limit})[move.to]
        expires_at = _expiry(source.parts)
        return MoveIn(entry.fingerprint, expires_at, join, holds.get(move.to), capacity)

    async def _settle_move(self, rid: str, token: str, lines: tuple[Line, ...] | None) -> None:
        """Settles this attempt's claim; the index entry goes with it (a claim recovery
        settled took its entry away itself, and the id may have another saga's by now)."""
        if await self.storage.settle_move(rid, token, lines):
            await self.storage.unschedule_saga(rid)

    # -- recovery -------------------------------------------------------------------------

    async def recover(self, rid: str) -> str:
        """Finishes or rolls back a saga whose owner did not (a move here; any other in
        engine/usecases/sagas.py); returns what it did."""
        entry = await self.storage.directory(rid)
        if entry is None or entry.moving is None:
            return await super().recover(rid)
        action = await self._finish_move(rid, entry, entry.moving)
        if action != "none":  # else its caller settled it (and took its index entry away)
            await self.storage.unschedule_saga(rid)
            self.metrics.sagas_recovered.labels(action).inc()
        return action

    async def _finish_move(self, rid: str, entry: DirEntry, record: MoveRecord) -> str:
        move, token = record.move, record.token
        out = await self.storage.cancel_move_out(rid, token, move)
        if out.reply is Reply.DONE:  # the line left the source: the destination holds it
            lines: tuple[Line, ...] | None = moved_lines(entry.lines, move)
            action = "moved"
        else:  # it never will now: what the destination holds of this attempt goes back
            into = MoveIn(entry.fingerprint, 0, False, None, None)
            await self.storage.undo_move_in(rid, token, move, self.clock.now_ms(), into)
            lines, action = None, "move_rolled_back"
        return action if await self.storage.settle_move(rid, token, lines) else "none"


def _refused(rid: str, move: Move, state: ReservationState | None) -> FailedPrecondition:
    """A step found the reservation no longer HELD (another call won), or its part there
    changed under the move (MISSING, MOVED: a state no call leaves in a race it lost)."""
    if state is None:
        where = f"{move.location} and {move.to}"
        return FailedPrecondition(f"reservation {rid}: its parts at {where} changed; retry")
    return FailedPrecondition(f"reservation {rid} is {state.value}, not HELD")


def _not_held(parts: list[PartState], now: int) -> ReservationState | None:
    """Why a reservation with these parts cannot move: its state if not HELD (or EXPIRED
    once past its expiry), else None."""
    states = {p.state for p in parts}
    if states != {ReservationState.HELD}:
        return overall_state(states) if states - {None} else ReservationState.RELEASED
    if _expiry(parts) <= now:
        return ReservationState.EXPIRED
    return None


def _expiry(parts: list[PartState]) -> int:
    return min((p.expires_at for p in parts), default=0)
