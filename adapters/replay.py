"""python -m adapters.replay: sends dead letters through the normal path again, by Redis.

The documented way is `omnistock dead-letters replay` (cli/letters.py): over gRPC, with an
operator's token, it applies the letters kept in the server's store through the server and
needs no access to Redis. It uses `entries_of` below. This command is for dead letters kept
in a Redis the server does not read (the adapters' own, apart from the server's store).

After what made them fail is mended (a mapping set, a location made, a parser fixed), the
dead letters it caused go back onto the ingest stream, where the Streams adapter applies
them like any entry; each is deleted from the dead-letter stream once its events are on
the ingest stream. Exactly once: a letter replayed twice (the command killed between the
two steps) carries the same event ids, which the server answers DUPLICATE.

    python -m adapters.replay [--from stream|shopify|square|lightspeed] [--reason TEXT]
                              [--dry-run]

A stream entry goes back as it was written; a webhook delivery is parsed again from its
kept body and headers (its signature was checked when it arrived), and one that still does
not parse stays, its new reason printed. Exit codes: 0 every chosen letter replayed (or
none chosen); 3 some could not be parsed and stay; 1 Redis could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from adapters.config import (
    DEAD_BODY,
    DEAD_FROM,
    DEAD_HEADERS,
    DEAD_REASON,
    DEAD_RECEIVED,
    DEFAULT_STREAM,
    add_common_flags,
    dead_letter_stream,
    redis_url,
)
from adapters.webhooks import lightspeed, shopify, square
from adapters.webhooks.payloads import load_object
from adapters.webhooks.writer import stream_entry
from engine.domain.errors import InvalidArgument
from engine.domain.model import StockEvent
from engine.store.connect import connect

EXIT_OK, EXIT_REDIS, EXIT_STILL_BAD = 0, 1, 3
# platform -> its parser, from a kept delivery: headers, body, when it arrived (ms)
PARSERS: dict[str, Callable[[dict[str, str], bytes, int], list[StockEvent]]] = {
    shopify.SHOPIFY: shopify.events,
    square.SQUARE: lambda _headers, body, _received: square.events(load_object(body)),
    lightspeed.LIGHTSPEED: lambda _headers, body, received: lightspeed.events(body, received),
}


@dataclass
class Replayed:
    replayed: int = 0
    still_bad: list[tuple[str, str]] = field(default_factory=list)  # (letter id, why)


def entries_of(fields: dict[str, bytes]) -> list[dict[str, str | bytes]]:
    """What a dead letter puts back on the ingest stream; InvalidArgument if it still
    cannot be read."""
    origin = fields.get(DEAD_FROM, b"").decode()
    if origin == "stream":
        return [{k: v for k, v in fields.items() if not k.startswith("dead.")}]
    parse = PARSERS.get(origin)
    if parse is None:
        raise InvalidArgument(DEAD_FROM, f"no way to replay a letter from {origin!r}")
    headers = json.loads(fields.get(DEAD_HEADERS, b"{}"))
    received = int(fields.get(DEAD_RECEIVED, b"0"))
    events = parse(headers, fields.get(DEAD_BODY, b""), received)
    return [dict(stream_entry(event)) for event in events]


async def replay(
    redis: Any, stream: str, origin: str = "", reason: str = "", dry_run: bool = False
) -> Replayed:
    """Replays the dead letters of `stream` from `origin` (all: "") whose reason holds
    `reason`, oldest first."""
    dead, done = dead_letter_stream(stream), Replayed()
    for letter_id, raw in await redis.xrange(dead):
        fields = {k.decode(): v for k, v in raw.items()}
        if origin and fields.get(DEAD_FROM, b"").decode() != origin:
            continue
        if reason and reason not in fields.get(DEAD_REASON, b"").decode(errors="replace"):
            continue
        try:
            entries = entries_of(fields)
        except (InvalidArgument, ValueError) as exc:
            done.still_bad.append((letter_id.decode(), str(exc)))
            continue
        if not dry_run:
            for entry in entries:  # one at a time: on a cluster the streams may be apart
                await redis.xadd(stream, entry)
            await redis.xdel(dead, letter_id)
        done.replayed += 1
    return done


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.replay",
        description="Send dead letters through the normal ingest path again",
        allow_abbrev=False,
    )
    add_common_flags(parser, metrics_port=0)
    parser.add_argument("--stream", default=DEFAULT_STREAM, help="the ingest stream")
    parser.add_argument(
        "--from", dest="origin", default="", choices=("", "stream", *PARSERS), help="only these"
    )
    parser.add_argument("--reason", default="", help="only letters whose reason holds this")
    parser.add_argument("--dry-run", action="store_true", help="say what would go, move none")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    try:
        redis = await connect(redis_url(args.redis_url, args.state_dir), 5.0)
        try:
            done = await replay(redis, args.stream, args.origin, args.reason, args.dry_run)
        finally:
            await redis.aclose()
    except (RedisError, OSError) as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return EXIT_REDIS
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {done.replayed}; still bad {len(done.still_bad)}")
    for letter_id, why in done.still_bad:
        print(f"  {letter_id}: {why}", file=sys.stderr)
    return EXIT_STILL_BAD if done.still_bad else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
