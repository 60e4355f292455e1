"""`omnistock`: the command line's flags, its errors and exit codes (listed in cli/__init__.py).

`main` is the console script; `run` is the same command as a coroutine, for a caller with an
event loop of its own (the tests, whose loop serves the server too).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

import grpc

from adapters import counts
from adapters.config import add_server_flags, server_access, server_channel
from adapters.counts import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_SERVER
from cli import letters, views
from engine.domain.errors import InvalidArgument

# 0 ok, 1 the server (unreachable or failing), 2 bad input, 3 something left undone
# (EXIT_STALE: dead letters still bad too): the codes of adapters.counts; then ours
EXIT_NOT_FOUND, EXIT_DENIED = 4, 5
EXITS = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INPUT,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
}  # any other status (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...): EXIT_SERVER
MAX_LIST = 1000  # the most a list call of the server answers

Command = Callable[[argparse.Namespace, grpc.aio.Channel], Awaitable[int]]


# -- the command line -------------------------------------------------------------------------


def page_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_LIST:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_LIST}, got {text}")
    return value


def common_flags() -> argparse.ArgumentParser:
    """What every command that calls the server takes: where the server is and how to reach
    it (adapters/config.py, as every command's), the output, a call's time limit."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_server_flags(common)
    common.add_argument("--json", action="store_true", help="print JSON: the proto's fields")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds a call may take")
    return common


class Commands:
    """Subcommands, each with the common flags, its coroutine and its own parser (for its
    usage errors) set as defaults."""

    def __init__(
        self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser, dest: str
    ) -> None:
        self.choices = parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())
        self.common = common

    def add(self, name: str, run: Command | None, text: str) -> argparse.ArgumentParser:
        parents = [self.common] if run else []
        sub = self.choices.add_parser(name, parents=parents, help=text, allow_abbrev=False)
        sub.set_defaults(run=run, parser=sub)
        return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnistock",
        description="Look at and mend a running omnistock server.",
        epilog="exit codes: 0 ok; 1 the server could not be reached or failed the call; "
        "2 bad input (usage, INVALID_ARGUMENT); 3 something left undone (dead letters "
        "still bad, stale count lines); 4 NOT_FOUND; 5 UNAUTHENTICATED or "
        "PERMISSION_DENIED; 130 Ctrl-C",
        allow_abbrev=False,
    )
    commands = Commands(parser, common_flags(), "command")
    row = commands.add("row", views.row, "a stock row: every field, and its holds")
    row.add_argument("location")
    row.add_argument("sku")
    commands.add("reservation", views.reservation, "state, expiry, lines").add_argument("id")
    commands.add("location", views.location, "fields, rows, held reservations").add_argument("id")
    commands.add("sources", views.sources, "each source of stock events: its lag and clock")
    alerts = commands.add(
        "alerts", views.alerts, "shortages, sequence gaps, clock skews, band crossings"
    )
    alerts.add_argument("--after", default="", help="only alerts after this id")
    alerts.add_argument("--limit", type=page_size, default=100, help="at most this many")
    alerts.add_argument("--follow", action="store_true", help="then each new one as it comes")
    alerts.add_argument(
        "--follow-seconds", type=float, default=0.0, help="follow this long (0: until Ctrl-C)"
    )
    add_dead_letters(commands.add("dead-letters", None, "the ingest adapters' dead letters"))
    counts.add_arguments(commands.add("count", None, "send a count file (adapters.counts)"))
    return parser


def add_dead_letters(parser: argparse.ArgumentParser) -> None:
    actions = Commands(parser, common_flags(), "action")
    listed = actions.add("list", letters.list_letters, "the dead letters, oldest first")
    replay = actions.add("replay", letters.replay, "apply them through the server; delete them")
    for sub in (listed, replay):
        sub.add_argument("--from", dest="origin", default="", help="stream, shopify, square, ...")
        sub.add_argument("--reason", default="", help="only letters whose reason holds this")
    listed.add_argument("--after", default="", help="only letters after this id")
    listed.add_argument("--limit", type=page_size, default=100, help="at most this many")
    replay.add_argument("--dry-run", action="store_true", help="say what would go; send none")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.command == "count":
        counts.check_arguments(args.parser, args)
        return args
    try:
        args.access = server_access(args)
    except InvalidArgument as exc:
        args.parser.error(str(exc))
    return args


# -- running ----------------------------------------------------------------------------------


async def execute(args: argparse.Namespace) -> int:
    if args.command == "count":
        return await counts.run(args)
    try:
        async with server_channel(args.access) as channel:
            code: int = await args.run(args, channel)
            return code
    except grpc.aio.AioRpcError as exc:
        print(
            f"omnistock: {args.access.target}: {exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return EXITS.get(exc.code(), EXIT_SERVER)


async def run(argv: Sequence[str]) -> int:
    """The command, in the caller's event loop; a usage error is its exit code (2)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse said why (or printed --help)
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    return await execute(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(execute(args))
    except KeyboardInterrupt:
        if args.command == "count":
            return counts.interrupted(args)
        print("omnistock: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
