"""What the reservation scripts answer, decoded: the store hands up these typed values,
never a script's raw list (the contract of each is in the header of its .lua file)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, NamedTuple

from engine.domain.model import ReservationState


class Reply(enum.StrEnum):
    HELD = "HELD"  # hold, extend: the part is held (until expires_at)
    EXISTS = "EXISTS"  # hold: the id's part was there already, with these lines (its state)
    SHORT = "SHORT"  # hold: not enough stock (short says of what)
    FULL = "FULL"  # hold: the location's pick capacity for the day is used up
    CONFLICT = "CONFLICT"  # hold, claim: the id exists with other lines
    COMMITTED = "COMMITTED"  # commit: the part is committed (changed: by this call)
    RELEASED = "RELEASED"  # release: the part is released (changed: by this call)
    STATE = "STATE"  # commit, release, extend, move steps: the part is in `state`, which forbids it
    MISSING = "MISSING"  # commit, release, extend, move steps: no such part
    MOVED = "MOVED"  # commit, release, move out: the part holds other lines than the caller
    # read; hold: the id's lines were moved (it holds nothing anew)
    DONE = "DONE"  # move out: the line was taken off the part (by this attempt, now or before)
    CANCELLED = "CANCELLED"  # move steps: this attempt was rolled back here (it may not land)
    UNDONE = "UNDONE"  # move in, undone: changed, whether it took back a hold of this attempt
    PROMISED = "PROMISED"  # commit: a line still waits for supply (or its promise broke)


class ReleaseMode(enum.StrEnum):
    """release.lua's modes: a caller's release; a rollback that leaves a tombstone (so a
    late hold of the same id finds it released); a rollback of a part that never took
    effect, forgotten at once."""

    RELEASE = "release"
    TOMBSTONE = "tombstone"
    FORGET = "forget"


class Saga(enum.StrEnum):
    """The directory's saga field of a reservation across locations: '' while none is
    under way (or once placed), PENDING + its owner while being placed, then COMMITTING ->
    COMMITTED or RELEASING -> RELEASED, or ABORTED when recovery rolled its placing back;
    MOVING + a token while a MoveLine is under way (of any reservation), '' again after."""

    NONE = ""
    COMMITTING = "COMMITTING"
    COMMITTED = "COMMITTED"
    RELEASING = "RELEASING"
    RELEASED = "RELEASED"
    ABORTED = "ABORTED"


PENDING = "PENDING:"  # + the placing call's owner id
MOVING = "MOVING:"  # + the token of the MoveLine attempt under way (engine/usecases/moves.py)


class Claim(enum.StrEnum):
    NEW = "NEW"  # the saga is this call's
    CONFLICT = "CONFLICT"  # the id exists with other lines
    SAGA = "SAGA"  # the id's saga is another call's (saga: its state)
    MOVED = "MOVED"  # place: a MoveLine moved (or is moving) the id's lines: it holds nothing anew


class MoveClaim(enum.StrEnum):
    NEW = "NEW"  # the move is this call's
    DONE = "DONE"  # the move id moved a line before (done: what it moved)
    SAGA = "SAGA"  # another call's step is under way (saga: the directory's saga field)
    STALE = "STALE"  # a move changed the lines since the caller read them
    MISSING = "MISSING"  # no such reservation


class MoveClaimReply(NamedTuple):
    reply: MoveClaim
    text: str = ""  # DONE: the move done ("location\tsku\tqty\tto"); SAGA: the saga field


class Short(NamedTuple):
    sku: str
    requested: int
    available: int


class HoldReply(NamedTuple):
    reply: Reply
    state: ReservationState | None = None  # HELD, EXISTS
    expires_at: int = 0  # HELD, EXISTS
    short: tuple[Short, ...] = ()  # SHORT
    used: int = 0  # FULL: orders already picked at the location that day


class PartReply(NamedTuple):
    reply: Reply
    changed: bool = False  # COMMITTED, RELEASED: this call made it so
    state: ReservationState | None = None  # STATE
    expires_at: int = 0  # HELD (extend)
    waiting: bytes = b""  # HELD (extend): the part's field fl, its units waiting for supply
    sku: str = ""  # PROMISED: the line waiting


class ClaimReply(NamedTuple):
    reply: Claim
    saga: str = ""  # SAGA: the directory's saga field ('' once settled)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def hold_reply(raw: Sequence[Any]) -> HoldReply:
    reply = Reply(_text(raw[0]))
    if reply is Reply.HELD:
        return HoldReply(reply, ReservationState.HELD, int(raw[1]))
    if reply is Reply.EXISTS:
        return HoldReply(reply, ReservationState(_text(raw[1])), int(raw[2] or 0))
    if reply is Reply.SHORT:
        flat = raw[1:]
        short = tuple(
            Short(_text(flat[i]), int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        )
        return HoldReply(reply, short=short)
    if reply is Reply.FULL:
        return HoldReply(reply, used=int(raw[1]))
    if reply is Reply.STATE:  # move in
        return HoldReply(reply, ReservationState(_text(raw[1])))
    return HoldReply(reply)  # CONFLICT; move in: MISSING, CANCELLED


def part_reply(raw: Sequence[Any]) -> PartReply:
    reply = Reply(_text(raw[0]))
    if reply in (Reply.COMMITTED, Reply.RELEASED, Reply.UNDONE):
        return PartReply(reply, changed=int(raw[1]) == 1)
    if reply is Reply.STATE:
        return PartReply(reply, state=ReservationState(_text(raw[1])))
    if reply is Reply.HELD:
        return PartReply(reply, expires_at=int(raw[1]), waiting=raw[2] if len(raw) > 2 else b"")
    if reply is Reply.PROMISED:
        return PartReply(reply, sku=_text(raw[1]))
    return PartReply(reply)  # MISSING, MOVED; move out: DONE, CANCELLED


def move_claim_reply(raw: Sequence[Any]) -> MoveClaimReply:
    reply = MoveClaim(_text(raw[0]))
    return MoveClaimReply(reply, _text(raw[1]) if len(raw) > 1 else "")


def claim_reply(raw: Sequence[Any]) -> ClaimReply:
    reply = Claim(_text(raw[0]))
    return ClaimReply(reply, _text(raw[1]) if reply is Claim.SAGA else "")
