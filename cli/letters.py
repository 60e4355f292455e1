"""The ingest adapters' dead letters (in the server's store, OperatorService): listing them,
and replaying them once what made them fail is mended.

A replay sends each chosen letter's events, one letter a call, through
StockService.ApplyEvents, then deletes the letter (DeleteDeadLetters). A stream entry is
sent as it was written; a webhook delivery is parsed again from its kept body and headers
(adapters/replay.py `entries_of`). A letter that still does not parse, or whose events the
server refuses (INVALID_ARGUMENT: the whole call, nothing applied), stays, and its new reason
is printed. Exactly once: a replay stopped between the two steps leaves a letter whose
events were applied; the next replay sends the same event ids, which the server answers
DUPLICATE, and deletes it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from adapters.config import event_of
from adapters.counts import EXIT_OK, EXIT_STALE, short
from adapters.replay import entries_of
from cli.show import as_json, dumps, now_ms, say, table, when
from engine.domain.errors import InvalidArgument
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

PAGE = 1000  # letters a ListDeadLetters call, the server's most
SHOWN_FIELDS = ("event_id", "location_id", "sku", "kind", "qty", "source")


def what(letter: pb.DeadLetter) -> str:
    """What a letter held, in brief: a stream entry's event, or a webhook's delivery id."""
    if letter.origin != "stream":
        return f"delivery {letter.fields['dead.id'].decode(errors='replace')}"
    got = {k: letter.fields[k].decode(errors="replace") for k in SHOWN_FIELDS if k in letter.fields}
    return " ".join(f"{k}={v}" for k, v in got.items())


async def list_letters(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    request = pb.ListDeadLettersRequest(
        after=args.after, limit=args.limit, origin=args.origin, reason_contains=args.reason
    )
    stub = pb_grpc.OperatorServiceStub(channel)
    got = list((await stub.ListDeadLetters(request, timeout=args.timeout)).letters)
    if args.json:
        say(dumps([as_json(letter) for letter in got]))
    elif got:
        now = now_ms()
        rows = [(d.id, when(d.at, now), d.origin, d.reason, what(d)) for d in got]
        say(table(("ID", "DEAD AT", "FROM", "REASON", "WHAT"), rows))
    else:
        say("no dead letters")
    if len(got) == args.limit:
        print(f"(more: --after {got[-1].id})", file=sys.stderr)
    return 0


# -- replay ---------------------------------------------------------------------------------


@dataclass
class Replayed:
    """What a replay did: letters replayed (or, in a dry run, that would be), those still
    bad and why, the outcomes of the events sent, the rows they left short."""

    dry_run: bool
    replayed: int = 0
    still_bad: list[tuple[str, str]] = field(default_factory=list)  # (letter id, why)
    outcomes: Counter[str] = field(default_factory=Counter)
    short_rows: list[str] = field(default_factory=list)

    def summary(self, in_json: bool) -> str:
        if in_json:
            return dumps(
                {
                    "dry_run": self.dry_run,
                    "replayed": self.replayed,
                    "outcomes": dict(sorted(self.outcomes.items())),
                    "still_bad": [{"id": i, "reason": why} for i, why in self.still_bad],
                    "short_rows": self.short_rows,
                }
            )
        verb = "would replay" if self.dry_run else "replayed"
        events = ", ".join(f"{name} {n}" for name, n in sorted(self.outcomes.items()))
        counted = f" (events: {events})" if events else ""
        return f"{verb} {self.replayed}{counted}; still bad {len(self.still_bad)}"


async def chosen(
    stub: pb_grpc.OperatorServiceStub, args: argparse.Namespace
) -> AsyncIterator[pb.DeadLetter]:
    """Every letter that matches --from and --reason, oldest first, a page at a time."""
    after = ""
    while True:
        request = pb.ListDeadLettersRequest(
            after=after, limit=PAGE, origin=args.origin, reason_contains=args.reason
        )
        page = (await stub.ListDeadLetters(request, timeout=args.timeout)).letters
        for letter in page:
            yield letter
        if len(page) < PAGE:
            return
        after = page[-1].id


def events_of(letter: pb.DeadLetter) -> list[pb.StockEvent]:
    """The letter's stock events; InvalidArgument or ValueError (BadEntry) if it still
    cannot be read."""
    entries = entries_of(dict(letter.fields))
    return [
        event_of({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in e.items()})
        for e in entries
    ]


async def replay(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    operator = pb_grpc.OperatorServiceStub(channel)
    stock = pb_grpc.StockServiceStub(channel)
    done = Replayed(args.dry_run)
    try:
        async for letter in chosen(operator, args):
            if await replay_one(letter, stock, args, done):
                await operator.DeleteDeadLetters(
                    pb.DeleteDeadLettersRequest(ids=[letter.id]), timeout=args.timeout
                )
    except grpc.aio.AioRpcError:
        if done.replayed or done.still_bad:  # what was done before the call that failed
            say(done.summary(args.json))
        raise
    say(done.summary(args.json))
    return EXIT_STALE if done.still_bad else EXIT_OK  # 3: something left undone


async def replay_one(
    letter: pb.DeadLetter, stock: pb_grpc.StockServiceStub, args: argparse.Namespace, done: Replayed
) -> bool:
    """Sends the letter's events; True when it is to be deleted (replayed, not a dry run)."""
    report = (lambda _text: None) if args.json else say
    try:
        events = events_of(letter)
    except (InvalidArgument, ValueError) as exc:  # BadEntry, JSON, UTF-8 are ValueErrors
        return still_bad(done, letter, str(exc), args.json)
    if args.dry_run:
        report(f"{letter.id}  would send {len(events)} event(s)")
        done.replayed += 1
        return False
    if events:
        try:
            applied = await stock.ApplyEvents(
                pb.ApplyEventsRequest(events=events), timeout=args.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return still_bad(done, letter, exc.details() or "", args.json)
        outcomes = [outcome_name(o) for o in applied.outcomes]
        done.outcomes.update(outcomes)
        shorts = [short(row) for row in applied.short_rows]
        done.short_rows += shorts
        report("\n  ".join([f"{letter.id}  {', '.join(outcomes)}", *shorts]))
    else:
        report(f"{letter.id}  no events (nothing to apply)")
    done.replayed += 1
    return True


def outcome_name(outcome: pb.EventOutcome.ValueType) -> str:
    return str(pb.EventOutcome.Name(outcome)).removeprefix("EVENT_OUTCOME_").lower()


def still_bad(done: Replayed, letter: pb.DeadLetter, why: str, quiet: bool) -> bool:
    done.still_bad.append((letter.id, why))
    if not quiet:
        print(f"{letter.id}  still bad: {why}", file=sys.stderr, flush=True)
    return False
