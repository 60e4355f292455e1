"""Platform ids -> omnistock ids, from a CSV file, through StockService.SetMappings.

    python -m adapters.mappings FILE.csv [--server HOST:PORT] [--token-file PATH] [--tls]
        [--tls-ca PATH] [--tls-cert PATH --tls-key PATH]

The file has a header row naming the columns `source,kind,external_id,id` (in any order;
others are ignored); kind is `location` or `item`; an empty id removes the mapping. Such a
file is small: it is read and checked whole before anything is sent, so a bad line sets
nothing. Then it is sent in calls of 1000 mappings.

Exit codes: 0 set; 1 the server refused or could not be reached; 2 bad input, a line named
"FILE:LINE: <field>: <why>".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from adapters.config import ServerAccess, add_server_flags, server_access, server_channel
from adapters.counts import EXIT_INPUT, EXIT_OK, EXIT_SERVER, failed
from adapters.files import BadLine, batched, columns, csv_row, numbered
from engine.domain.errors import InvalidArgument
from engine.domain.model import check_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

COLUMNS = ("source", "kind", "external_id", "id")
KINDS = {"location": pb.MAPPING_KIND_LOCATION, "item": pb.MAPPING_KIND_ITEM}
BATCH = 1000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.mappings",
        description="Set (or, with an empty id, remove) platform id mappings from a CSV file.",
        allow_abbrev=False,
    )
    parser.add_argument("file", type=Path, help="CSV with the header source,kind,external_id,id")
    add_server_flags(parser)
    args = parser.parse_args(argv)
    try:
        args.access = server_access(args)
    except InvalidArgument as exc:
        parser.error(str(exc))
    return args


def mapping(lineno: int, row: list[str], at: dict[str, int]) -> pb.Mapping:
    if len(row) <= max(at.values()):  # a short line would read as a removal: refuse it
        missing = next(name for name in COLUMNS if at[name] >= len(row))
        raise BadLine(lineno, f"{missing}: missing (the line ends before column {at[missing] + 1})")
    source, kind, external_id, ours = (row[at[name]].strip() for name in COLUMNS)
    if kind.lower() not in KINDS:
        raise BadLine(lineno, f"kind: must be location or item, got {kind!r}")
    try:
        check_id(source, "source")
        check_id(external_id, "external_id")
        if ours:
            check_id(ours, "id")
    except InvalidArgument as exc:
        raise BadLine(lineno, str(exc)) from None
    return pb.Mapping(source=source, kind=KINDS[kind.lower()], external_id=external_id, id=ours)


def read_mappings(path: Path) -> list[pb.Mapping]:
    with path.open("rb") as f:
        lines = numbered(f)
        first = next(lines, None)
        if first is None:
            raise BadLine(1, "header: the file is empty (it starts with a header row)")
        at = columns(first[0], csv_row(*first), COLUMNS)
        return [mapping(lineno, csv_row(lineno, text), at) for lineno, text in lines]


async def set_mappings(access: ServerAccess, mappings: list[pb.Mapping]) -> None:
    async with server_channel(access) as channel:
        stub = pb_grpc.StockServiceStub(channel)
        for batch in batched(mappings, BATCH):
            await stub.SetMappings(pb.SetMappingsRequest(mappings=batch))


async def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        mappings = read_mappings(path)
    except BadLine as exc:
        return failed(f"{path}:{exc}", EXIT_INPUT)
    except OSError as exc:
        return failed(f"{path}: cannot read: {exc}", EXIT_INPUT)
    try:
        await set_mappings(args.access, mappings)
    except grpc.aio.AioRpcError as exc:
        return failed(f"{args.server}: {exc.code().name}: {exc.details()}", EXIT_SERVER)
    removed = sum(not m.id for m in mappings)
    print(f"{len(mappings) - removed} mappings set, {removed} removed")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
