"""A full count of one location, from a file, through StockService.ReconcileCount.

    python -m adapters.counts FILE --location L --counted-at WHEN [--count-id ID]
        [--missing zero|keep] [--source S] [--format csv|ndjson] [--batch 1000]
        [--server HOST:PORT] [--token-file PATH] [--tls] [--tls-ca PATH]
        [--tls-cert PATH --tls-key PATH]

`omnistock count` is this command. The bearer token comes from --token-file, else from
OMNISTOCK_TOKEN (adapters/config.py, "reaching the server").

FILE is CSV (a header row naming at least the columns `sku` and `qty`, in any order; other
columns are ignored) or NDJSON (one object a line with "sku" and an integer "qty"), and
gzipped if its name ends in .gz. Blank lines are skipped. The file is streamed: read a line
at a time and sent --batch lines a message, so a count of millions of lines costs this
process one batch of memory.

The last message is marked `end`; the server applies nothing of a count whose stream ends
without it. So when a bad line, an unreadable file, Ctrl-C or a crash stops this command
midway, the call is cancelled and no line of the count is applied.

The default count id, `<location>@<counted_at>`, makes running the same command again a
resend the server recognises: it changes nothing. (A corrected file needs its own
--count-id and a later --counted-at than the count it corrects: at the same time only
larger figures win, so that arrival order never matters; lines not applied make it exit 3.)

Exit codes: 0 the count was applied; 1 the server refused it or could not be reached;
2 bad input: the command line, the file, or one of its lines ("FILE:LINE: <field>: <why>");
3 lines were stale: not applied, their rows counted later than --counted-at (or at it,
with as much or more), or that time older than the server's event window (the summary
says how many); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import orjson

from adapters.config import ServerAccess, add_server_flags, epoch_ms, server_access, server_channel
from adapters.files import BadLine, batched, cell, columns, csv_row, gzipped, numbered, opened
from engine.domain.errors import InvalidArgument
from engine.domain.model import check_id, check_qty
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

EXIT_OK, EXIT_SERVER, EXIT_INPUT, EXIT_STALE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
FORMATS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}
MISSING = {"zero": pb.MISSING_SKUS_ZERO, "keep": pb.MISSING_SKUS_KEEP}
PROGRESS_EVERY = 1.0  # seconds between progress lines


# -- the command line -------------------------------------------------------------------


def counted_at(text: str) -> int:
    """ISO 8601 with an offset or Z, or integer ms since the epoch -> ms since the epoch."""
    if re.fullmatch(r"[0-9]+", text):
        ms = int(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither ISO 8601 nor ms since the epoch"
            ) from None
        if when.tzinfo is None:
            raise argparse.ArgumentTypeError(f"{text!r} needs an offset or Z (whose time is it?)")
        ms = epoch_ms(when)
    if not 0 < ms < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time after the epoch")
    return ms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags (`omnistock count` takes the same)."""
    parser.add_argument("file", type=Path, help="the count: .csv, .ndjson or .jsonl, maybe .gz")
    parser.add_argument("--location", required=True, help="the location counted")
    parser.add_argument(
        "--counted-at",
        required=True,
        type=counted_at,
        help="when the shelves were counted: ISO 8601 with an offset or Z, or ms since the epoch",
    )
    parser.add_argument("--count-id", default="", help="default: <location>@<counted-at ms>")
    parser.add_argument(
        "--missing",
        choices=sorted(MISSING),
        help="rows the file does not list: zero them or keep them (default: the server's)",
    )
    parser.add_argument("--source", default="", help="whose ids the file uses (its mapping)")
    add_server_flags(parser)
    parser.add_argument("--format", choices=["csv", "ndjson"], help="default: from the name")
    parser.add_argument("--batch", type=int, default=1000, help="count lines per message")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What add_arguments' flags cannot say alone; sets args.access (the server's)."""
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    try:
        args.access = server_access(args)
    except InvalidArgument as exc:
        parser.error(str(exc))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.counts",
        description="Send a full count of one location from a CSV or NDJSON file (.gz too).",
        allow_abbrev=False,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffixes = path.suffixes[:-1] if gzipped(path) else path.suffixes
    if suffixes and suffixes[-1].lower() in FORMATS:
        return FORMATS[suffixes[-1].lower()]
    raise ValueError("cannot tell the format from the name: give --format csv or ndjson")


# -- reading ----------------------------------------------------------------------------


def count_line(lineno: int, sku: str, qty: int) -> pb.CountLine:
    try:
        check_id(sku, "sku")
        check_qty(qty, "qty", allow_zero=True)
    except InvalidArgument as exc:
        raise BadLine(lineno, str(exc)) from None
    return pb.CountLine(sku=sku, qty=qty)


def csv_lines(lines: Iterator[tuple[int, str]]) -> Iterator[pb.CountLine]:
    first = next(lines, None)
    if first is None:
        raise BadLine(1, "header: the file is empty (a CSV count starts with a header row)")
    at = columns(first[0], csv_row(*first), ("sku", "qty"))
    for lineno, text in lines:
        row = csv_row(lineno, text)
        qty = cell(lineno, row, at, "qty")
        if not re.fullmatch(r"[+-]?[0-9]+", qty):
            raise BadLine(lineno, f"qty: must be an integer, got {qty!r}")
        yield count_line(lineno, cell(lineno, row, at, "sku"), int(qty))


def ndjson_lines(lines: Iterator[tuple[int, str]]) -> Iterator[pb.CountLine]:
    for lineno, text in lines:
        try:
            item = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadLine(lineno, f"json: not valid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise BadLine(lineno, "json: must be an object with sku and qty")
        sku, qty = item.get("sku"), item.get("qty")
        for name, value in (("sku", sku), ("qty", qty)):
            if value is None:
                raise BadLine(lineno, f"{name}: missing")
        if not isinstance(sku, str):
            raise BadLine(lineno, f"sku: must be a string, got {sku!r}")
        if not isinstance(qty, int) or isinstance(qty, bool):
            raise BadLine(lineno, f"qty: must be an integer, got {qty!r}")
        yield count_line(lineno, sku, qty)


PARSERS: dict[str, Callable[[Iterator[tuple[int, str]]], Iterator[pb.CountLine]]] = {
    "csv": csv_lines,
    "ndjson": ndjson_lines,
}


class Progress:
    """A line on stderr at most about once a second (and at the end): lines sent, how much of
    the file has been read (of its stored bytes: compressed ones for .gz), lines a second."""

    def __init__(self, path: Path, stored: io.BufferedIOBase) -> None:
        self.path = path
        self.stored = stored
        self.size = path.stat().st_size
        self.started = time.monotonic()
        self.shown, self.lines_shown = float("-inf"), -1

    def sent(self, lines: int, *, final: bool = False) -> None:
        now = time.monotonic()
        due = now - self.shown >= PROGRESS_EVERY or (final and lines != self.lines_shown)
        if not due:
            return
        self.shown, self.lines_shown = now, lines
        read = f", {100 * self.stored.tell() // self.size}% read" if self.size else ""
        rate = lines / max(now - self.started, 1e-9)
        print(f"{self.path}: {lines:,} lines sent{read}, {rate:,.0f} lines/s", file=sys.stderr)


# -- sending ----------------------------------------------------------------------------


async def write(call: Any, request: pb.ReconcileCountRequest) -> bool:
    """False when the call has ended: the server refused the count midway, or the
    connection failed. Awaiting the call then raises its status; the error of a write that
    meets the end can be a stand-in, INTERNAL "Internal error from Core" (grpc/grpc#36066)."""
    if call.done():
        return False
    try:
        await call.write(request)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        return False
    return True


async def send(
    call: Any, header: pb.CountHeader, batches: Iterable[list[pb.CountLine]], progress: Progress
) -> None:
    if not await write(call, pb.ReconcileCountRequest(header=header)):
        return
    sent = 0
    for batch in batches:
        if not await write(call, pb.ReconcileCountRequest(lines=batch)):
            return
        sent += len(batch)
        progress.sent(sent)
    progress.sent(sent, final=True)
    if await write(call, pb.ReconcileCountRequest(end=True)):
        await call.done_writing()


async def reconcile(
    access: ServerAccess,
    header: pb.CountHeader,
    batches: Iterable[list[pb.CountLine]],
    progress: Progress,
) -> pb.ReconcileCountResponse:
    """Streams the count, the header first, `end` last. Anything that stops it before (a
    bad line, an unreadable file, Ctrl-C) cancels the call: the server applies nothing."""
    async with server_channel(access) as channel:
        call = pb_grpc.StockServiceStub(channel).ReconcileCount()
        try:
            await send(call, header, batches, progress)
        except BaseException:
            call.cancel()
            raise
        reply: pb.ReconcileCountResponse = await call
        return reply


def short(row: pb.ShortRow) -> str:
    """A row left short, and the reservations it leaves uncovered (also `omnistock`'s)."""
    holds = ", ".join(
        f"{u.reservation_id} (qty {u.qty}, missing {u.missing})" for u in row.uncovered
    )
    return (
        f"short {row.location_id} {row.sku}: on_hand {row.on_hand} < reserved "
        f"{row.reserved}; uncovered: {holds}"
    )


def summary(header: pb.CountHeader, reply: pb.ReconcileCountResponse) -> str:
    out = [
        f"count {header.count_id} of {header.location_id}: lines {reply.lines}, "
        f"changed {reply.changed}, unchanged {reply.unchanged}, zeroed {reply.zeroed}, "
        f"stale {reply.stale}"
    ]
    out += [short(row) for row in reply.short_rows]
    return "\n".join(out)


def failed(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


async def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        parse = PARSERS[file_format(path, args.format)]
    except ValueError as exc:
        return failed(f"{path}: {exc}", EXIT_INPUT)
    header = pb.CountHeader(
        location_id=args.location,
        count_id=args.count_id or f"{args.location}@{args.counted_at}",
        counted_at=args.counted_at,
        missing=MISSING.get(args.missing, pb.MISSING_SKUS_UNSPECIFIED),
        source=args.source,
    )
    try:
        with opened(path) as (data, stored):
            batches = batched(parse(numbered(data)), args.batch)
            reply = await reconcile(args.access, header, batches, Progress(path, stored))
    except BadLine as exc:
        return failed(f"{path}:{exc}", EXIT_INPUT)
    except (OSError, EOFError, zlib.error) as exc:  # missing, unreadable, a broken .gz
        return failed(f"{path}: cannot read: {exc}", EXIT_INPUT)
    except grpc.aio.AioRpcError as exc:
        return failed(f"{args.server}: {exc.code().name}: {exc.details()}", EXIT_SERVER)
    print(summary(header, reply))
    if reply.stale:
        return failed(
            f"{path}: {reply.stale:,} of {reply.lines:,} lines were not applied: their rows "
            f"were counted later than {header.counted_at} ms (or then, with as much or more: "
            "a correction needs a later time), or that time is older than the server's "
            "event window. Send the count again with the time it was really taken "
            "(--counted-at)",
            EXIT_STALE,
        )
    return EXIT_OK


def interrupted(args: argparse.Namespace) -> int:
    """What Ctrl-C during a count says (the call is cancelled)."""
    return failed(
        f"{args.file}: interrupted; nothing of the count was applied unless its end had "
        "been sent (then it is applied whole): run it again to be sure, a count already "
        "applied changes nothing",
        EXIT_INTERRUPTED,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return interrupted(args)


if __name__ == "__main__":
    sys.exit(main())
