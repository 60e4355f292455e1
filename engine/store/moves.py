"""A MoveLine's steps on reservation parts: the hold at the destination (move_in.lua) and
the line's leaving the source (move_out.lua), each with its rollback, and what a move reads
of the parts first. The story is in engine/usecases/moves.py; the directory's side is
engine/store/directory.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.domain.moves import Move
from engine.store.base import Base
from engine.store.codecs import PART_STATE_FIELDS, ChannelHold, PartState, PickCapacity, part_state
from engine.store.keys import Keys
from engine.store.replies import HoldReply, PartReply, hold_reply, part_reply
from engine.store.scripts import Command


@dataclass(frozen=True, slots=True)
class Source:
    """What a move reads of a reservation's parts before it starts."""

    parts: list[PartState]  # at each of its locations
    channel: str  # the sales channel its holds were made for ('' for none)
    capacity_day: str  # the day of pick capacity its part at the source took ('' for none)


@dataclass(frozen=True, slots=True)
class MoveIn:
    """The destination's side of one move attempt (move_in.lua)."""

    fingerprint: str  # the reservation's (a new part carries it, as every part does)
    expires_at: int  # the reservation's expiry: the hold's
    join: bool  # the reservation has a part at the destination already
    channel: ChannelHold | None  # the reservation's channel, with its rule there
    capacity: PickCapacity | None  # a new part takes one order of the day's pick capacity


class MoveSteps(Base):
    """The part steps of MoveLine (see engine/store/storage.py)."""

    async def move_source(
        self, reservation_id: str, locations: Iterable[str], source: str
    ) -> Source:
        """Each part's state and expiry, and the source part's channel and capacity day:
        one round trip."""
        locs = list(locations)

        def build(pipe: Any) -> None:
            for location in locs:
                pipe.hmget(Keys.part(location, reservation_id), PART_STATE_FIELDS)
            pipe.hmget(Keys.part(source, reservation_id), ["ch", "c"])

        *got, (ch, day) = await self.pipeline(build)
        parts = [part_state(loc, fields) for loc, fields in zip(locs, got, strict=True)]
        return Source(parts, (ch or b"").decode(), (day or b"").decode())

    def _in_call(
        self, reservation_id: str, token: str, mode: str, move: Move, now: int, into: MoveIn
    ) -> tuple[list[str], list[Any]]:
        to = move.to
        keys = [
            Keys.part(to, reservation_id),
            Keys.due(to),
            Keys.channel_holds(to),
            Keys.pools(to),
            Keys.capacity(to),
            self.keys.stock(to, move.sku),
            self.keys.log(to, move.sku),
        ]
        rule = into.channel or ChannelHold()
        cap: list[Any] = [-1, "", ""] if into.capacity is None else list(into.capacity)
        args = [reservation_id, token, mode, into.fingerprint, now, into.expires_at]
        args += [self.retention_ms, move.sku, move.qty, "1" if into.join else "0"]
        args += [rule.channel, rule.buffer, rule.share_ppm, *cap, Keys.changes(to)]
        return keys, args

    async def move_in(
        self, reservation_id: str, token: str, move: Move, now: int, into: MoveIn
    ) -> HoldReply:
        """Holds the moved line at its destination, for the attempt `token`; right behind
        it goes the destination's wake-up, as behind every hold."""
        keys, args = self._in_call(reservation_id, token, "hold", move, now, into)
        then: Command = ("ZADD", Keys.wake(move.to), "LT", into.expires_at, move.to)
        return hold_reply(await self.call("move_in", keys, args, then=then))

    async def undo_move_in(
        self, reservation_id: str, token: str, move: Move, now: int, into: MoveIn
    ) -> PartReply:
        """Takes back what the attempt `token` held at the destination, and makes sure its
        hold never lands there if it has not yet."""
        keys, args = self._in_call(reservation_id, token, "undo", move, now, into)
        return part_reply(await self.call("move_in", keys, args))

    def _out_call(
        self, reservation_id: str, token: str, mode: str, move: Move, now: int
    ) -> tuple[list[str], list[Any]]:
        at = move.location
        keys = [
            Keys.part(at, reservation_id),
            Keys.due(at),
            Keys.capacity(at),
            Keys.channel_holds(at),
            self.keys.stock(at, move.sku),
            self.keys.log(at, move.sku),
        ]
        args = [reservation_id, token, mode, now, self.retention_ms, move.sku, move.qty]
        return keys, [*args, Keys.changes(at)]

    async def move_out(self, reservation_id: str, token: str, move: Move, now: int) -> PartReply:
        """Takes the moved line off its part at the source: the step that makes the move."""
        keys, args = self._out_call(reservation_id, token, "out", move, now)
        return part_reply(await self.call("move_out", keys, args))

    async def cancel_move_out(self, reservation_id: str, token: str, move: Move) -> PartReply:
        """Recovery's step at the source: DONE if the attempt took the line out, else it
        never will (CANCELLED)."""
        keys, args = self._out_call(reservation_id, token, "cancel", move, 0)
        return part_reply(await self.call("move_out", keys, args))
