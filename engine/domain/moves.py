"""Moving a held line to another location (ReservationService.MoveLine), in the business's
words: what a move asks, whether a retry asks the same, and the lines a move leaves. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.domain.errors import FailedPrecondition, InvalidArgument
from engine.domain.model import Line, canonical_lines, check_id, check_qty


@dataclass(frozen=True, slots=True)
class Move:
    """The line of `sku` held at `location`, to be held at `to` instead. `qty` as asked: 0
    for the whole line; once resolved against the reservation, the line's qty. A line moves
    whole: it is never split."""

    location: str
    sku: str
    qty: int
    to: str

    def check(self) -> Move:
        """Its fields as a request gives them (INVALID_ARGUMENT naming the field)."""
        check_id(self.location, "location_id")
        check_id(self.sku, "sku")
        if self.qty:
            check_qty(self.qty, "qty")
        check_id(self.to, "to_location_id")
        if self.to == self.location:
            raise InvalidArgument("to_location_id", "the line is held there already")
        return self

    def resolved(self, lines: Iterable[Line]) -> Move:
        """This move of one of `lines`, with the line's qty; FAILED_PRECONDITION when the
        reservation has no such line, or a qty other than the one asked."""
        for line in lines:
            if (line.location, line.sku) == (self.location, self.sku):
                if self.qty and self.qty != line.qty:
                    raise FailedPrecondition(
                        f"qty: the line of {self.sku} at {self.location} holds {line.qty}, "
                        f"not {self.qty}; a line moves whole (qty 0: all of it)"
                    )
                return Move(self.location, self.sku, line.qty, self.to)
        raise FailedPrecondition(f"the reservation holds no {self.sku} at {self.location}")

    def same_as(self, done: Move) -> bool:
        """Whether this request asks for the move `done` made (a retry of it): the same line
        and destination, and its qty or none."""
        return (self.location, self.sku, self.to) == (done.location, done.sku, done.to) and (
            self.qty in (0, done.qty)
        )


def moved_lines(lines: Iterable[Line], move: Move) -> tuple[Line, ...]:
    """The reservation's lines once the (resolved) move is made: the line leaves its
    location and joins the destination's line of the same sku, if there is one."""
    kept = [ln for ln in lines if (ln.location, ln.sku) != (move.location, move.sku)]
    return canonical_lines([*kept, Line(move.to, move.sku, move.qty)])
