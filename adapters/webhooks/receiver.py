"""The receiver's HTTP side (aiohttp): each delivery whose signature checks out becomes stock
events on the ingest stream (adapters/config.py), written durably (writer.py) before the
platform gets its answer.

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
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from adapters.config import DEFAULT_STREAM, dead_letter_stream
from adapters.webhooks import shopify, square
from adapters.webhooks.payloads import load_object
from adapters.webhooks.writer import StreamWriter, stream_entry
from engine.clock import Clock, SystemClock
from engine.domain import StockEvent
from engine.errors import InvalidArgument, Unavailable

log = logging.getLogger("adapters.webhooks")

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
    # secrets: kept out of repr, so logging the settings never shows them
    shopify_secret: str = field(default="", repr=False)  # the app's client secret; empty: 404
    square_signature_key: str = field(default="", repr=False)  # the subscription's; empty: 404
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

    async def receive_shopify(self, request: web.Request) -> web.Response:
        return await self._timed(shopify.SHOPIFY, self._shopify(request))

    async def receive_square(self, request: web.Request) -> web.Response:
        return await self._timed(square.SQUARE, self._square(request))

    async def _timed(self, platform: str, answer: Awaitable[web.Response]) -> web.Response:
        started = time.perf_counter()
        try:
            return await answer
        finally:
            self.metrics.seconds.labels(platform).observe(time.perf_counter() - started)

    async def _shopify(self, request: web.Request) -> web.Response:
        secret = self.settings.shopify_secret
        if not secret:
            return _not_configured(shopify.SHOPIFY)
        body = await request.read()
        headers = request.headers
        if not shopify.signature_ok(secret, body, headers.get(shopify.HMAC, "")):
            return self._refuse(shopify.SHOPIFY)
        received = self.clock.now_ms()
        topic = headers.get(shopify.TOPIC, "")
        delivery = Delivery(shopify.SHOPIFY, shopify.delivery_id(headers), topic, body)
        return await self._take(delivery, lambda: shopify.events(headers, body, received))

    async def _square(self, request: web.Request) -> web.Response:
        key, url = self.settings.square_signature_key, self.settings.square_notification_url
        if not key:
            return _not_configured(square.SQUARE)
        body = await request.read()
        if not square.signature_ok(key, url, body, request.headers.get(square.SIGNATURE, "")):
            return self._refuse(square.SQUARE)
        event_id, kind = square.ids(body)
        delivery = Delivery(square.SQUARE, event_id, kind, body)
        return await self._take(delivery, lambda: square.events(load_object(body)))

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
            web.post("/webhooks/shopify", receiver.receive_shopify),
            web.post("/webhooks/square", receiver.receive_square),
            web.get("/healthz", healthz),
        ]
    )
    return app
