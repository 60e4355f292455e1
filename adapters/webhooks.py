"""The webhook receiver: Shopify and Square push stock changes here, and each delivery whose
signature checks out becomes stock events on the ingest stream (adapters/config.py), written
durably before the platform gets its answer.

    POST /webhooks/shopify   inventory_levels/update, /connect, /disconnect -> one COUNT each
    POST /webhooks/square    inventory.count.updated -> one COUNT per IN_STOCK count
    GET  /healthz            the process is up

Answers, and why:

    200  written (accepted); nothing to write (ignored: another topic or type, or no IN_STOCK
         count); or a signed payload that is not the documented shape, kept on the dead-letter
         stream with the reason, since a retry would not make it any better (dead_letter)
    401  a missing or wrong signature: nothing is written anywhere
    404  the platform's secret is not configured here
    503  Redis did not take the write, or did not report it fsynced, within the write budget:
         the platform retries later

Durable before answering. All entries of one delivery go to the stream in one MULTI/EXEC,
followed on the same connection by WAITAOF 1 0 <ms>, which returns once the local append-only
file is fsynced past those writes. A 200 is only sent after that, so an acknowledged delivery
survives a crash of Redis; anything less is a 503 and the platform sends it again.

Event ids stay the same when a platform retries, so the engine applies a retried delivery
once (I5). Shopify: X-Shopify-Event-Id (the same across retries, and across the deliveries of
duplicate subscriptions), else X-Shopify-Webhook-Id (one delivery, the same across its
retries). Because Shopify shares one event id across all the deliveries a merchant action
produces, the id is qualified by topic, location and item: shopify:<id>:<action>:<loc>:<item>.
Square: its event_id is the same on retries and one event can carry many counts, so
square:<event_id>:<location>:<catalog object>. Locations and items keep the platform's ids;
the engine translates them through the source's mapping (engine/ingest.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import enum
import hashlib
import hmac
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.exceptions import RedisError

from adapters.config import (
    DEFAULT_STREAM,
    KINDS,
    add_common_flags,
    dead_letter_stream,
    entry_fields,
    epoch_ms,
    redis_url,
    serve_metrics,
)
from engine.clock import Clock, SystemClock
from engine.domain import EventKind, StockEvent, check_event, check_id
from engine.errors import InvalidArgument, Unavailable
from engine.logs import setup_logging
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

log = logging.getLogger("adapters.webhooks")  # also when run as __main__

SHOPIFY, SQUARE = "shopify", "square"
SHOPIFY_HMAC = "X-Shopify-Hmac-Sha256"
SHOPIFY_TOPIC = "X-Shopify-Topic"
SHOPIFY_EVENT_ID = "X-Shopify-Event-Id"
SHOPIFY_WEBHOOK_ID = "X-Shopify-Webhook-Id"
SHOPIFY_TRIGGERED_AT = "X-Shopify-Triggered-At"
SHOPIFY_TOPICS = frozenset(
    {"inventory_levels/update", "inventory_levels/connect", "inventory_levels/disconnect"}
)
SQUARE_SIGNATURE = "x-square-hmacsha256-signature"
SQUARE_TYPE = "inventory.count.updated"
WRITE_TIMEOUT = 0.8  # seconds; platforms give a few more before they count a delivery failed


class Result(enum.StrEnum):
    ACCEPTED = "accepted"
    IGNORED = "ignored"
    BAD_SIGNATURE = "bad_signature"
    DEAD_LETTER = "dead_letter"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Settings:
    stream: str = DEFAULT_STREAM
    shopify_secret: str = ""  # the app's client secret; empty: /webhooks/shopify answers 404
    square_signature_key: str = ""  # the subscription's; empty: /webhooks/square answers 404
    square_notification_url: str = ""  # exactly as configured at Square: it is signed too
    wait_aof: bool = True
    write_timeout: float = WRITE_TIMEOUT


class WebhookMetrics:
    """The receiver's own metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "omnistock_webhook_requests_total",
            "Webhook deliveries by platform and result (accepted, ignored, bad_signature, "
            "dead_letter, unavailable)",
            ["platform", "result"],
            registry=self.registry,
        )
        self.events = Counter(
            "omnistock_webhook_events_total",
            "Stock events written to the ingest stream",
            ["platform"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "omnistock_webhook_seconds",
            "Time to answer a webhook delivery",
            ["platform"],
            registry=self.registry,
        )


# --- signatures, computed over the raw body as each platform documents it ---


def _signature_matches(key: str, signed: bytes, given: str) -> bool:
    expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest())
    return bool(given) and hmac.compare_digest(expected, given.encode(errors="replace"))


def shopify_signature_ok(secret: str, body: bytes, given: str) -> bool:
    """base64(HMAC-SHA256(client secret, raw body)) == X-Shopify-Hmac-Sha256."""
    return _signature_matches(secret, body, given)


def square_signature_ok(key: str, notification_url: str, body: bytes, given: str) -> bool:
    """base64(HMAC-SHA256(signature key, notification URL + raw body)) ==
    x-square-hmacsha256-signature."""
    return _signature_matches(key, notification_url.encode() + body, given)


# --- payloads -> stock events (pure; InvalidArgument names the field and why) ---


def load_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument("body", f"not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise InvalidArgument("body", f"must be a JSON object, got {type(payload).__name__}")
    return payload


def iso_ms(value: object, field: str) -> int:
    """An ISO 8601 / RFC 3339 time with a UTC offset, as ms since the epoch."""
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidArgument(field, f"must be an ISO 8601 time with a UTC offset, got {value!r}")
    return epoch_ms(when)


def _int_id(payload: Mapping[str, Any], field: str) -> str:
    value = payload.get(field)
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise InvalidArgument(field, f"must be an id, got {value!r}")
    return check_id(str(value), field)


def _text(payload: Mapping[str, Any], field: str, where: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}{field}", f"must be a non-empty string, got {value!r}")
    return value


def _on_hand(qty: int) -> int:
    # Both platforms let a count go below zero (sold more than was recorded); no units are
    # left on the shelf then, and a COUNT is absolute physical stock, which is never negative.
    return max(qty, 0)


def _count(event_id: str, location: str, sku: str, qty: int, at: int, source: str) -> StockEvent:
    event = StockEvent(event_id, location, sku, EventKind.COUNT, _on_hand(qty), at, source=source)
    return check_event(event, "event")


def shopify_events(headers: Mapping[str, str], body: bytes, received_ms: int) -> list[StockEvent]:
    """The COUNT an inventory_levels delivery carries; [] for any other topic.
    Payloads: https://shopify.dev/docs/api/webhooks (topics inventory_levels/*)."""
    topic = headers.get(SHOPIFY_TOPIC, "")
    if topic not in SHOPIFY_TOPICS:
        return []
    payload = load_object(body)
    delivery = headers.get(SHOPIFY_EVENT_ID) or headers.get(SHOPIFY_WEBHOOK_ID)
    if not delivery:
        raise InvalidArgument(SHOPIFY_WEBHOOK_ID, "missing: a retry could not be recognised")
    location = _int_id(payload, "location_id")
    item = _int_id(payload, "inventory_item_id")
    action = topic.rsplit("/", 1)[1]
    if action == "disconnect":  # the item is no longer stocked there
        qty, at = 0, _triggered_at(headers, received_ms)
    else:
        qty, at = _available(payload), _updated_at(payload, headers)
    event_id = f"{SHOPIFY}:{delivery}:{action}:{location}:{item}"
    return [_count(event_id, location, item, qty, at, SHOPIFY)]


def _available(payload: Mapping[str, Any]) -> int:
    if "available" not in payload:
        raise InvalidArgument("available", "missing")
    value = payload["available"]
    if value is None:
        # Shopify documents `available` as null when the item's inventory is not tracked:
        # nothing is counted there, so the count is 0.
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("available", f"must be an integer or null, got {value!r}")
    return value


def _updated_at(payload: Mapping[str, Any], headers: Mapping[str, str]) -> int:
    """updated_at is in whole seconds: two updates of one level within a second would tie,
    and the larger count would win. X-Shopify-Triggered-At, when it falls in that second,
    tells them apart (it carries the fraction); a later one is not used, as it may lag."""
    at = iso_ms(payload.get("updated_at"), "updated_at")
    given = headers.get(SHOPIFY_TRIGGERED_AT)
    if given:
        triggered = iso_ms(given, SHOPIFY_TRIGGERED_AT)
        if at <= triggered < at + 1000:
            return triggered
    return at


def _triggered_at(headers: Mapping[str, str], received_ms: int) -> int:
    given = headers.get(SHOPIFY_TRIGGERED_AT)
    return iso_ms(given, SHOPIFY_TRIGGERED_AT) if given else received_ms


def square_events(payload: Mapping[str, Any]) -> list[StockEvent]:
    """A COUNT for each IN_STOCK count of an inventory.count.updated event; [] for any other
    type. Payload: https://developer.squareup.com/reference/square/webhooks/inventory.count.updated
    """
    kind = _text(payload, "type", "")
    if kind != SQUARE_TYPE:
        return []
    event_id = _text(payload, "event_id", "")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    counts = obj.get("inventory_counts") if isinstance(obj, dict) else None
    if not isinstance(counts, list):
        raise InvalidArgument("data.object.inventory_counts", "missing or not a list")
    events = []
    for i, count in enumerate(counts):
        where = f"data.object.inventory_counts[{i}]."
        if not isinstance(count, dict):
            raise InvalidArgument(where.rstrip("."), "must be an object")
        if count.get("state") == "IN_STOCK":  # other states are not on-hand stock
            events.append(_square_count(event_id, count, where))
    return events


def _square_count(event_id: str, count: Mapping[str, Any], where: str) -> StockEvent:
    location = check_id(_text(count, "location_id", where), f"{where}location_id")
    sku = check_id(_text(count, "catalog_object_id", where), f"{where}catalog_object_id")
    qty = _whole(_text(count, "quantity", where), f"{where}quantity")
    at = iso_ms(count.get("calculated_at"), f"{where}calculated_at")
    return _count(f"{SQUARE}:{event_id}:{location}:{sku}", location, sku, qty, at, SQUARE)


def _whole(decimal: str, field: str) -> int:
    """Square quantities are decimal strings ("10", "12.375"); stock is counted in units."""
    try:
        value = Decimal(decimal)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value != value.to_integral_value():
        raise InvalidArgument(field, f"must be a whole number of units, got {decimal!r}")
    return int(value)


def stream_entry(event: StockEvent) -> dict[str, str]:
    return entry_fields(
        pb.StockEvent(
            event_id=event.event_id,
            location_id=event.location,
            sku=event.sku,
            kind=KINDS[event.kind.value],
            qty=event.qty,
            source_time=event.source_time,
            source=event.source,
        )
    )


# --- the durable write ---


class StreamWriter:
    """Appends to a Redis stream: one MULTI/EXEC, then (wait_aof) WAITAOF on the same
    connection. Raises Unavailable when Redis does not take it, or does not report the local
    fsync, within the budget."""

    def __init__(self, redis: aioredis.Redis, wait_aof: bool, timeout: float) -> None:
        self.redis = redis
        self.wait_aof = wait_aof
        self.timeout = timeout

    async def append(self, stream: str, entries: Sequence[Mapping[str, str | bytes]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._send(stream, entries)
        except (TimeoutError, RedisError, OSError) as exc:
            raise Unavailable(f"{stream}: {type(exc).__name__}: {exc}") from exc
        written = replies[len(entries) + 1]
        if not isinstance(written, list) or any(isinstance(r, Exception) for r in written):
            raise Unavailable(f"{stream}: the transaction failed: {written!r}")
        if self.wait_aof and int(replies[-1][0]) < 1:
            raise Unavailable(f"{stream}: not fsynced within {self.timeout}s")

    async def _send(self, stream: str, entries: Sequence[Mapping[str, str | bytes]]) -> list[Any]:
        # Not redis-py's transaction pipeline: it hands its connection back after EXEC, and
        # WAITAOF counts the writes of the connection it is sent on. Sent as one pipeline,
        # MULTI ... EXEC WAITAOF share a connection and a round trip.
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("MULTI")
        for fields in entries:
            pipe.xadd(stream, {name: value for name, value in fields.items()})
        pipe.execute_command("EXEC")
        if self.wait_aof:
            pipe.execute_command("WAITAOF", 1, 0, max(1, int(self.timeout * 1000)))
        return list(await pipe.execute())


# --- the HTTP side ---


@dataclass(frozen=True, slots=True)
class Delivery:
    platform: str
    delivery_id: str  # for the dead-letter entry and the log
    topic: str  # Shopify's topic or Square's type
    body: bytes


Parse = Callable[[], list[StockEvent]]


class Receiver:
    def __init__(
        self, redis: aioredis.Redis, settings: Settings, metrics: WebhookMetrics, clock: Clock
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.writer = StreamWriter(redis, settings.wait_aof, settings.write_timeout)

    async def shopify(self, request: web.Request) -> web.Response:
        return await self._timed(SHOPIFY, self._shopify(request))

    async def square(self, request: web.Request) -> web.Response:
        return await self._timed(SQUARE, self._square(request))

    async def _timed(self, platform: str, answer: Awaitable[web.Response]) -> web.Response:
        started = time.perf_counter()
        try:
            return await answer
        finally:
            self.metrics.seconds.labels(platform).observe(time.perf_counter() - started)

    async def _shopify(self, request: web.Request) -> web.Response:
        secret = self.settings.shopify_secret
        if not secret:
            return _not_configured(SHOPIFY)
        body = await request.read()
        headers = request.headers
        if not shopify_signature_ok(secret, body, headers.get(SHOPIFY_HMAC, "")):
            return self._refuse(SHOPIFY)
        received = self.clock.now_ms()
        delivery = Delivery(
            SHOPIFY,
            headers.get(SHOPIFY_WEBHOOK_ID, "") or headers.get(SHOPIFY_EVENT_ID, ""),
            headers.get(SHOPIFY_TOPIC, ""),
            body,
        )
        return await self._take(delivery, lambda: shopify_events(headers, body, received))

    async def _square(self, request: web.Request) -> web.Response:
        key, url = self.settings.square_signature_key, self.settings.square_notification_url
        if not key:
            return _not_configured(SQUARE)
        body = await request.read()
        if not square_signature_ok(key, url, body, request.headers.get(SQUARE_SIGNATURE, "")):
            return self._refuse(SQUARE)
        event_id, kind = _square_ids(body)
        delivery = Delivery(SQUARE, event_id, kind, body)
        return await self._take(delivery, lambda: square_events(load_object(body)))

    async def _take(self, delivery: Delivery, parse: Parse) -> web.Response:
        try:
            events = parse()
        except InvalidArgument as exc:
            return await self._dead_letter(delivery, str(exc))
        if not events:
            return self._answer(delivery.platform, Result.IGNORED)
        try:
            await self.writer.append(self.settings.stream, [stream_entry(e) for e in events])
        except Unavailable as exc:
            return self._unavailable(delivery, exc)
        self.metrics.events.labels(delivery.platform).inc(len(events))
        return self._answer(delivery.platform, Result.ACCEPTED, events=len(events))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> web.Response:
        entry: dict[str, str | bytes] = {
            "platform": delivery.platform,
            "reason": reason,
            "delivery_id": delivery.delivery_id,
            "topic": delivery.topic,
            "body": delivery.body,
        }
        try:
            await self.writer.append(dead_letter_stream(self.settings.stream), [entry])
        except Unavailable as exc:
            return self._unavailable(delivery, exc)
        log.warning(
            "%s delivery %r dead-lettered: %s", delivery.platform, delivery.delivery_id, reason
        )
        return self._answer(delivery.platform, Result.DEAD_LETTER, reason=reason)

    def _unavailable(self, delivery: Delivery, exc: Unavailable) -> web.Response:
        log.warning(
            "%s delivery %r not written, answered 503: %s",
            delivery.platform,
            delivery.delivery_id,
            exc,
        )
        return self._answer(delivery.platform, Result.UNAVAILABLE, status=503)

    def _refuse(self, platform: str) -> web.Response:
        log.info("%s delivery refused: missing or wrong signature", platform)
        return self._answer(platform, Result.BAD_SIGNATURE, status=401)

    def _answer(
        self, platform: str, result: Result, status: int = 200, **more: object
    ) -> web.Response:
        self.metrics.requests.labels(platform, result.value).inc()
        return web.json_response({"result": result.value, **more}, status=status)


def _square_ids(body: bytes) -> tuple[str, str]:
    """Square's event_id and type, as far as the body gives them (for the dead-letter entry)."""
    try:
        payload = load_object(body)
    except InvalidArgument:
        return "", ""
    event_id, kind = payload.get("event_id"), payload.get("type")
    return (
        event_id if isinstance(event_id, str) else "",
        kind if isinstance(kind, str) else "",
    )


def _not_configured(platform: str) -> web.Response:
    return web.json_response({"error": f"{platform} webhooks are not configured here"}, status=404)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(
    redis: aioredis.Redis,
    settings: Settings,
    metrics: WebhookMetrics | None = None,
    clock: Clock | None = None,
) -> web.Application:
    receiver = Receiver(redis, settings, metrics or WebhookMetrics(), clock or SystemClock())
    app = web.Application()
    app.add_routes(
        [
            web.post("/webhooks/shopify", receiver.shopify),
            web.post("/webhooks/square", receiver.square),
            web.get("/healthz", healthz),
        ]
    )
    return app


# --- the command line ---


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m adapters.webhooks",
        description="Receives Shopify and Square inventory webhooks onto the ingest stream.",
    )
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on")
    parser.add_argument(
        "--shopify-secret",
        default=env.get("SHOPIFY_WEBHOOK_SECRET", ""),
        help="the Shopify app's client secret (env SHOPIFY_WEBHOOK_SECRET); unset: 404",
    )
    parser.add_argument(
        "--square-signature-key",
        default=env.get("SQUARE_SIGNATURE_KEY", ""),
        help="the Square subscription's signature key (env SQUARE_SIGNATURE_KEY); unset: 404",
    )
    parser.add_argument(
        "--square-notification-url",
        default=env.get("SQUARE_NOTIFICATION_URL", ""),
        help="the notification URL exactly as configured at Square (env "
        "SQUARE_NOTIFICATION_URL): Square signs it, and behind a proxy it cannot be guessed",
    )
    parser.add_argument(
        "--no-wait-aof",
        action="store_true",
        help="answer once Redis took the write, without waiting for its AOF fsync (WAITAOF)",
    )
    parser.add_argument(
        "--write-timeout-seconds",
        type=float,
        default=WRITE_TIMEOUT,
        help="budget of one delivery's write; past it the platform gets a 503 and retries",
    )
    add_common_flags(parser, 9466)
    args = parser.parse_args(argv)
    if args.square_signature_key and not args.square_notification_url:
        parser.error("a Square signature key needs --square-notification-url: Square signs it")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        stream=args.stream,
        shopify_secret=args.shopify_secret,
        square_signature_key=args.square_signature_key,
        square_notification_url=args.square_notification_url,
        wait_aof=not args.no_wait_aof,
        write_timeout=args.write_timeout_seconds,
    )


async def appendonly(redis: aioredis.Redis) -> bool:
    """Whether Redis keeps an append-only file; True when it will not say (CONFIG refused)."""
    try:
        got = await redis.config_get("appendonly")
    except RedisError:
        return True
    return got.get("appendonly") in ("yes", b"yes")


async def serve(args: argparse.Namespace) -> None:
    from engine.app import redis_client  # the engine's fail-fast client settings

    setup_logging(args.log_level)
    settings = settings_of(args)
    metrics = WebhookMetrics()
    serve_metrics(args.metrics_port, metrics.registry)
    redis = redis_client(redis_url(args.redis_url, args.state_dir), settings.write_timeout)
    if settings.wait_aof and not await appendonly(redis):
        raise SystemExit(
            "the ingest stream's Redis has appendonly off: every delivery would wait for an "
            "fsync that never comes (503). Turn appendonly on there, or give --no-wait-aof."
        )
    runner = web.AppRunner(make_app(redis, settings, metrics))
    await runner.setup()
    host, port = args.listen.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    log.info(
        "webhooks on http://%s (shopify %s, square %s) -> stream %s",
        args.listen,
        "on" if settings.shopify_secret else "off",
        "on" if settings.square_signature_key else "off",
        settings.stream,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await redis.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
