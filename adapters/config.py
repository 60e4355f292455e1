"""What every adapter shares: where Redis and the server are (and how a command reaches the
server: its address, bearer token and TLS), the entry format of the ingest stream, logs and
metrics.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from redis.exceptions import RedisError

from engine.domain.errors import InvalidArgument
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

log = logging.getLogger("omnistock.adapters")

DEFAULT_STREAM = "omnistock:events"
DEFAULT_SERVER = "127.0.0.1:50051"
TOKEN_ENV = "OMNISTOCK_TOKEN"  # a command's bearer token, unless --token-file gives one
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
# held, so that `omnistock dead-letters replay` (or `python -m adapters.replay`) can send it
# through the normal path again. A
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


def secret(env_name: str, path: Path | None) -> str:
    """A secret from its file, else from its environment variable; never from a flag's value,
    which any user sees in `ps`. Both given is a mistake, refused rather than ranked. A file's
    trailing newline is not part of the secret."""
    given = os.environ.get(env_name, "")
    if path is None:
        return given
    if given:
        raise InvalidArgument(env_name, f"set, and {path} given too: give one of them")
    try:
        value = path.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(str(path), f"cannot be read ({exc})") from None
    if not value:
        raise InvalidArgument(str(path), "is empty")
    return value


# -- reaching the server ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerAccess:
    """How a command reaches the omnistock server: host:port, the bearer token sent with
    every call ("": none, for an open server or one that knows us by our certificate), and
    TLS credentials (None: plaintext)."""

    target: str
    token: str = ""
    tls: grpc.ChannelCredentials | None = None


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """--server, the bearer token and TLS: the same for every command that calls the server."""
    parser.add_argument("--server", default=DEFAULT_SERVER, help="the omnistock server, host:port")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"a file holding the bearer token, else env {TOKEN_ENV}; neither: no token",
    )
    parser.add_argument(
        "--tls", action="store_true", help="speak TLS, trusting the system's certificate roots"
    )
    parser.add_argument(
        "--tls-ca", type=Path, metavar="PATH", help="speak TLS, trusting this PEM CA instead"
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PATH",
        help="with --tls-key: a PEM client certificate chain (mutual TLS: its common name "
        "names the principal); implies TLS",
    )
    parser.add_argument("--tls-key", type=Path, metavar="PATH", help="the key of --tls-cert")


def server_access(args: argparse.Namespace) -> ServerAccess:
    """The access add_server_flags' flags describe; InvalidArgument naming the flag or file
    that cannot be used."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidArgument("--tls-cert", "and --tls-key go together")
    token = secret(TOKEN_ENV, args.token_file)
    if not (args.tls or args.tls_ca or args.tls_cert):
        return ServerAccess(args.server, token)
    pem = {
        name: _pem(path)
        for name, path in (("ca", args.tls_ca), ("key", args.tls_key), ("cert", args.tls_cert))
    }
    tls = grpc.ssl_channel_credentials(pem["ca"], pem["key"], pem["cert"])
    return ServerAccess(args.server, token, tls)


def _pem(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(str(path), f"cannot be read ({exc})") from None


class _Bearer:
    """Sends the token with every call of a channel (engine/client.py sends it per call)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self.token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One of each kind: a grpc.aio channel files an interceptor under the first kind it is.
class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, call: Any, details: Any, request: Any) -> Any:
        return await call(self.details(details), request)


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, call: Any, details: Any, request: Any) -> Any:
        return await call(self.details(details), request)


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, call: Any, details: Any, requests: Any) -> Any:
        return await call(self.details(details), requests)


class _StreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, call: Any, details: Any, requests: Any) -> Any:
        return await call(self.details(details), requests)


def server_channel(access: ServerAccess) -> grpc.aio.Channel:
    """A channel to the server that sends the token, if any, with every call."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    interceptors = [kind(access.token) for kind in kinds] if access.token else None
    if access.tls is None:
        return grpc.aio.insecure_channel(access.target, interceptors=interceptors)
    return grpc.aio.secure_channel(access.target, access.tls, interceptors=interceptors)
