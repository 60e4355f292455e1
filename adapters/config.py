"""What every adapter shares: where Redis and the server are, the entry format of the ingest
stream, logs and metrics.

The ingest stream. Store systems, and the webhook receiver, append stock events to a Redis
stream (default `omnistock:events`), one entry an event, its fields named as StockEvent's:

    event_id        unique at its source (the platform's delivery id, a till's sale id)
    location_id     our location id, or the source's own id where the source has a mapping
    sku             our sku, or the source's own item id where the source has a mapping
    kind            COUNT (qty is the absolute on_hand) or DELTA (qty is a signed change)
    qty             an integer
    source_time     when it happened at the source: ms since the epoch
    reservation_id  optional: the store's echo of a sale committed through omnistock
    source          optional: who sent it (its mapping applies: shopify, square, ...)

The Streams adapter (adapters/streams/) applies them; entries that can never be applied go
to the dead-letter stream `<stream>:dead`, with the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from redis.exceptions import RedisError

from engine.pb.omnistock.v1 import omnistock_pb2 as pb

log = logging.getLogger("omnistock.adapters")

DEFAULT_STREAM = "omnistock:events"
DEFAULT_SERVER = "127.0.0.1:50051"
KINDS = {"COUNT": pb.EVENT_KIND_COUNT, "DELTA": pb.EVENT_KIND_DELTA}
FIELDS = (
    "event_id",
    "location_id",
    "sku",
    "kind",
    "qty",
    "source_time",
    "reservation_id",
    "source",
    "sequence",
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(when: datetime) -> int:
    """An aware time as ms since the epoch (exact: no float rounding)."""
    return (when - _EPOCH) // _MS


class BadEntry(ValueError):
    """An entry that can never be a stock event: the message says which field and why."""


def dead_letter_stream(stream: str) -> str:
    return f"{stream}:dead"


# One layout for a dead letter, whichever adapter wrote it: these fields, then what it
# held, so that `python -m adapters.replay` can send it through the normal path again. A
# stream entry keeps its own fields beside them; a webhook delivery keeps its body, the
# headers its parser reads (JSON) and when it arrived.
DEAD_FROM = "dead.from"  # "stream", or the platform of a webhook delivery
DEAD_REASON = "dead.reason"  # why, naming the entry's own field
DEAD_AT = "dead.at"  # when it was dead-lettered (ms)
DEAD_ID = "dead.id"  # the stream entry's id, or the platform's delivery id
DEAD_BODY, DEAD_HEADERS, DEAD_RECEIVED = "dead.body", "dead.headers", "dead.received"


def dead_letter(origin: str, reason: str, ident: str | bytes) -> dict[str, str | bytes]:
    """The fields every dead letter starts with."""
    now = int(datetime.now(UTC).timestamp() * 1000)
    return {DEAD_FROM: origin, DEAD_REASON: reason, DEAD_AT: str(now), DEAD_ID: ident}


def entry_fields(event: pb.StockEvent) -> dict[str, str]:
    """A stock event as the fields of an ingest stream entry."""
    fields = {
        "event_id": event.event_id,
        "location_id": event.location_id,
        "sku": event.sku,
        "kind": pb.EventKind.Name(event.kind).removeprefix("EVENT_KIND_"),
        "qty": str(event.qty),
        "source_time": str(event.source_time),
    }
    if event.reservation_id:
        fields["reservation_id"] = event.reservation_id
    if event.source:
        fields["source"] = event.source
    if event.sequence:
        fields["sequence"] = str(event.sequence)
    return fields


def event_of(fields: Mapping[bytes, bytes]) -> pb.StockEvent:
    """An ingest stream entry as a stock event; BadEntry if it cannot be one. The engine
    checks the rest (ids, quantities) and rejects with its own reasons."""
    got = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    unknown = sorted(set(got) - set(FIELDS))
    if unknown:
        raise BadEntry(f"{unknown[0]}: not a field of a stock event (fields: {', '.join(FIELDS)})")
    kind = got.get("kind", "")
    if kind not in KINDS:
        raise BadEntry(f"kind: must be COUNT or DELTA, got {kind!r}")
    numbers = {}
    for name in ("qty", "source_time", "sequence"):
        try:
            numbers[name] = int(got.get(name, "0" if name == "sequence" else ""))
        except ValueError:
            raise BadEntry(f"{name}: must be an integer, got {got.get(name, '')!r}") from None
    try:
        return pb.StockEvent(
            event_id=got.get("event_id", ""),
            location_id=got.get("location_id", ""),
            sku=got.get("sku", ""),
            kind=KINDS[kind],
            qty=numbers["qty"],
            source_time=numbers["source_time"],
            reservation_id=got.get("reservation_id", ""),
            source=got.get("source", ""),
            sequence=numbers["sequence"],
        )
    except ValueError as exc:  # an integer out of int64's range
        raise BadEntry(f"qty/source_time/sequence: {exc}") from None


def redis_url(given: str, state_dir: Path) -> str:
    """--redis-url, else REDIS_URL, else the embedded store a local server started (it
    writes its URL to <state dir>/redis.url while it runs)."""
    if given:
        return given
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    path = state_dir / "redis.url"
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(
        f"no Redis to read from: give --redis-url, set REDIS_URL, or start the server with "
        f"its embedded store (it writes {path})"
    )


# A client of the store's new URL, if it moved since the last look; None: keep yours.
Follow = Callable[[], Awaitable[Any | None]]


class FollowedStore:
    """The Redis of the ingest stream, followed across restarts of the server's embedded
    store: the adapter calls `follow` after a failure, which reads <state dir>/redis.url
    again and, when the URL changed (the store came back on another port: its own was
    taken), connects to the new one. A URL given by --redis-url or REDIS_URL is not
    followed."""

    def __init__(
        self,
        given: str,
        state_dir: Path,
        connect: Callable[[str], Awaitable[Any]],
    ) -> None:
        self.followed = not (given or os.environ.get("REDIS_URL"))
        self.url = redis_url(given, state_dir)
        self.path = state_dir / "redis.url"
        self.connect = connect
        self.client: Any = None

    async def open(self) -> Any:
        self.client = await self.connect(self.url)
        return self.client

    async def follow(self) -> Any | None:
        if not self.followed:
            return None
        try:
            url = self.path.read_text().strip()
        except OSError:  # the server is down: its store with it
            return None
        if not url or url == self.url:
            return None
        try:
            client = await self.connect(url)
        except (RedisError, OSError) as exc:
            log.warning("the store moved, but its new address does not answer yet: %s", exc)
            return None
        old, self.client, self.url = self.client, client, url
        log.warning("the store moved: following it to %s", self.path)
        if old is not None:
            await old.aclose()
        return client


def add_common_flags(parser: argparse.ArgumentParser, metrics_port: int) -> None:
    parser.add_argument(
        "--redis-url", default="", help="the Redis of the ingest stream (default: see --state-dir)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("state"),
        help="with no --redis-url or REDIS_URL: use the embedded store of the server run here",
    )
    parser.add_argument("--stream", default=DEFAULT_STREAM, help="the ingest stream's key")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=metrics_port,
        help="Prometheus metrics on 127.0.0.1:<port>; 0 = off",
    )
    parser.add_argument("--log-level", default="INFO")


def serve_metrics(port: int, registry: CollectorRegistry) -> None:
    if port:
        start_http_server(port, addr="127.0.0.1", registry=registry)
